"""dashkanban: a device showing up on the LAN becomes a Cumulocity IoT event."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # Looked up only when asked for: importlib.metadata costs ~50 ms and several MB at start-up,
    # which every command (and the daemon's resident set) would pay for nothing.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("dashkanban")
        except PackageNotFoundError:  # running from a source tree without an install
            return "0.0.0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
