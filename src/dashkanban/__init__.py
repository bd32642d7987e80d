"""dashkanban: a device showing up on the LAN becomes a Cumulocity IoT event."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dashkanban")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
