"""`dashkanban check` and `dashkanban test-button`.

The files are validated now; trying the uplink (TLS, login) lands with issue #4.
"""

from __future__ import annotations

import argparse

from dashkanban.buttons import load_buttons
from dashkanban.config import find_config, load_settings
from dashkanban.errors import NotAvailableError


def check_command(args: argparse.Namespace) -> int:
    path = find_config(args.config)
    settings = load_settings(path)
    print(f"✓ config {path}")
    if settings.buttons.source in ("csv", "both"):
        registry = load_buttons(settings.buttons.file)
        print(f"✓ buttons {settings.buttons.file}: {len(registry)} button(s)")
    raise NotAvailableError("trying the uplink is not available yet (issue #4)")


def test_button_command(args: argparse.Namespace) -> int:
    raise NotAvailableError("test-button is not available yet (issue #4)")
