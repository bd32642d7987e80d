"""The bundled sample data: a MACID.csv with bins and a store's morning as a pcapng capture,
which `demo` replays and the `sandbox` banner's config block points at."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_path(name: str) -> Path:
    """A file of the bundled sample data (buttons, capture)."""
    return Path(str(resources.files("dashkanban") / "data" / name))
