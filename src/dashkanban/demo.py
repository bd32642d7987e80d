"""`dashkanban demo`: the whole product against the built-in sandbox.

Until the sandbox (issue #5) and the uplink (issue #4) land, it runs what exists end to end: it
loads the bundled sample buttons and shows how each maps to Cumulocity.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dashkanban.buttons import load_buttons


def sample_path(name: str) -> Path:
    """A file of the bundled sample data (buttons, capture)."""
    return Path(str(resources.files("dashkanban") / "data" / name))


def demo_command(args: argparse.Namespace) -> int:
    registry = load_buttons(sample_path("MACID.csv"))
    table = Table(title="Sample buttons and their Cumulocity identity")
    for column in ("name", "MAC", "c8y_Serial (child device)", "bin", "part"):
        table.add_column(column)
    for button in registry:
        table.add_row(button.name, button.mac, button.serial, button.bin or "", button.part or "")
    console = Console()
    console.print(table)
    console.print("The sandbox and the replay of the sample capture come with issues #3 to #5.")
    return 0
