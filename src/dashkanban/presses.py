"""Sightings -> Presses: matching against the known buttons and the per-MAC dead time (pure).

The value type lives here; the debounce logic lands with the capture issue (#3).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dashkanban.buttons import Button


@dataclass(frozen=True, slots=True)
class Press:
    """One press of a known button: the first packet of a burst from its MAC."""

    button: Button
    time: datetime  # timezone-aware, the time of the first packet of the press
    trigger: str  # "arp", "dhcp" or "ndp": the kind of that first packet
