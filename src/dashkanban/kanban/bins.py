"""Kanban bins built from the button registry (pure).

A bin is the container a button signals for: MACID.csv names it in the `bin` column, with the part,
the quantity per container, where it is, who supplies it and the lead time. A bin has one or more
`reorder` buttons (pressed when a container is emptied) and optionally `refill` buttons (pressed
when the new container is in place). The bin's data is taken from its reorder buttons; a refill
button needs only the bin name, and where it repeats a value, the value must agree.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashkanban.detect.buttons import (
    Button,
    Registry,
    delimiter_of,
    parse_buttons,
)
from dashkanban.errors import ConfigError
from dashkanban.files import read_buttons_text

# The Kanban columns a button may carry, and the Bin attribute each one fills.
_BIN_FIELDS = (
    "part", "quantity", "location", "supplier", "lead_time_days", "cards", "supplier_email"
)


@dataclass(frozen=True, slots=True)
class Bin:
    """One Kanban loop: a container of `quantity` x `part` at `location`."""

    name: str
    part: str | None
    quantity: int | None
    location: str | None
    supplier: str | None
    lead_time_days: float | None
    reorder: tuple[Button, ...]  # the buttons that raise the reorder signal
    refill: tuple[Button, ...] = ()  # the buttons that clear it
    cards: int | None = None  # Kanban cards (containers) in the loop today
    supplier_email: str | None = None  # where `kanban rules install` sends the reorder mail

    @property
    def buttons(self) -> tuple[Button, ...]:
        return self.reorder + self.refill


@dataclass(frozen=True, slots=True)
class Bins:
    """The bins of a registry, looked up by name (as written) and by button serial."""

    by_name: Mapping[str, Bin]

    def get(self, name: str) -> Bin | None:
        return self.by_name.get(name)

    def find(self, name: str) -> Bin | None:
        """A bin by name, exact first, then ignoring case (what a person types on a shell)."""
        exact = self.by_name.get(name)
        if exact is not None:
            return exact
        folded = name.strip().casefold()
        for bin_ in self.by_name.values():
            if bin_.name.casefold() == folded:
                return bin_
        return None

    def of(self, button: Button) -> Bin | None:
        return self.by_name.get(button.bin) if button.bin else None

    def __iter__(self) -> Iterator[Bin]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    @property
    def names(self) -> list[str]:
        return sorted(self.by_name)


def button_lines(text: str) -> dict[str, int]:
    """Button name (case-folded) -> its line in MACID.csv, read the way `parse_buttons` reads it."""
    lines: dict[str, int] = {}
    rows = csv.reader(text.splitlines(), delimiter=delimiter_of(text), skipinitialspace=True)
    for number, row in enumerate(rows, start=1):
        if row and row[0].strip() and not row[0].lstrip().startswith("#"):
            lines.setdefault(row[0].strip().casefold(), number)
    return lines


def build_bins(
    registry: Iterable[Button], path: Path | None = None, lines: Mapping[str, int] | None = None
) -> Bins:
    """Group the buttons into bins and check that the Kanban columns make sense.

    `lines` maps a button's name (case-folded) to its MACID.csv line, for the error message.
    Raises ConfigError (`FILE:LINE: what is wrong`) on the first problem.
    """
    line_of = lines or {}

    def error(button: Button, message: str) -> ConfigError:
        return ConfigError(message, path, line_of.get(button.name.casefold()))

    reorder: dict[str, list[Button]] = {}
    refill: dict[str, list[Button]] = {}
    for button in registry:
        if not button.bin:
            extra = [f for f in _BIN_FIELDS if getattr(button, f) is not None]
            if extra:
                raise error(
                    button,
                    f"button {button.name!r} has {', '.join(extra)} but no bin; "
                    "add the bin it belongs to",
                )
            if button.role == "refill":
                raise error(
                    button,
                    f"refill button {button.name!r} has no bin; name the bin it refills",
                )
            continue
        target = refill if button.role == "refill" else reorder
        target.setdefault(button.bin, []).append(button)

    for bin_name, refills in refill.items():
        if bin_name not in reorder:
            known = ", ".join(sorted(reorder)) or "none"
            raise error(
                refills[0],
                f"refill button {refills[0].name!r} names bin {bin_name!r}, which no reorder "
                f"button has (bins with a reorder button: {known})",
            )

    bins: dict[str, Bin] = {}
    for bin_name, buttons in reorder.items():
        values: dict[str, Any] = {}
        for button in (*buttons, *refill.get(bin_name, ())):
            for field in _BIN_FIELDS:
                value = getattr(button, field)
                if value is None:
                    continue
                if field in values and values[field][0] != value:
                    first_value, first_button = values[field]
                    raise error(
                        button,
                        f"bin {bin_name!r}: {field} {_show(value)} on {button.name!r} differs "
                        f"from {_show(first_value)} on {first_button.name!r}",
                    )
                values.setdefault(field, (value, button))
        bins[bin_name] = Bin(
            name=bin_name,
            part=_value(values, "part"),
            quantity=_value(values, "quantity"),
            location=_value(values, "location"),
            supplier=_value(values, "supplier"),
            lead_time_days=_value(values, "lead_time_days"),
            reorder=tuple(buttons),
            refill=tuple(refill.get(bin_name, ())),
            cards=_value(values, "cards"),
            supplier_email=_value(values, "supplier_email"),
        )
    return Bins(bins)


def parse_bins(text: str, path: Path) -> tuple[Registry, Bins]:
    """MACID.csv text -> the registry and its bins, every error with file and line."""
    registry = parse_buttons(text, path)
    return registry, build_bins(registry, path, button_lines(text))


def load_bins(path: Path) -> tuple[Registry, Bins]:
    return parse_bins(read_buttons_text(path), path)


def _value(values: Mapping[str, Any], field: str) -> Any:
    found = values.get(field)
    return None if found is None else found[0]


def _show(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)
