"""Press -> the Cumulocity event value (pure). Design section 2 (`--jsonl`) and section 4."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dashkanban.config import EventSettings
from dashkanban.presses import Press


@dataclass(frozen=True, slots=True)
class Event:
    """An event as it goes to Cumulocity, and as `--jsonl` prints it."""

    time: datetime  # timezone-aware
    mac: str
    serial: str
    name: str
    type: str
    text: str
    trigger: str

    def as_json(self) -> dict[str, Any]:
        """The `--jsonl` object, keys in the contract's order."""
        return {
            "time": self.time.isoformat(timespec="microseconds"),
            "mac": self.mac,
            "serial": self.serial,
            "name": self.name,
            "type": self.type,
            "text": self.text,
            "trigger": self.trigger,
        }

    def to_jsonl(self) -> str:
        return json.dumps(self.as_json(), ensure_ascii=False)

    @property
    def c8y_time(self) -> str:
        """Cumulocity's time field: milliseconds and an offset (protocol notes 2.2)."""
        return self.time.isoformat(timespec="milliseconds")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        time = datetime.fromisoformat(str(data["time"]))
        if time.tzinfo is None:
            time = time.replace(tzinfo=UTC)
        return cls(
            time=time,
            mac=str(data["mac"]),
            serial=str(data["serial"]),
            name=str(data["name"]),
            type=str(data["type"]),
            text=str(data["text"]),
            trigger=str(data["trigger"]),
        )


def make_event(press: Press, settings: EventSettings) -> Event:
    """Fill the configured text template (its placeholders were checked by config)."""
    button = press.button
    text = settings.text.format(
        name=button.name,
        mac=button.mac,
        serial=button.serial,
        trigger=press.trigger,
        bin=button.bin or "",
        part=button.part or "",
        quantity="" if button.quantity is None else button.quantity,
        location=button.location or "",
    )
    return Event(
        time=press.time,
        mac=button.mac,
        serial=button.serial,
        name=button.name,
        type=settings.type,
        text=text,
        trigger=press.trigger,
    )
