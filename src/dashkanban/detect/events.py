"""Press -> the Cumulocity event value (pure): the `--jsonl` object (README.md, "Seeing presses")
and the event Cumulocity gets (docs/cumulocity.md, "The exact message sequence")."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dashkanban.config import (
    DEFAULT_EVENT_TEXT,
    EMPTY_TEXT_PROBLEM,
    EventSettings,
    Settings,
    event_text_problem,
    render_event_text,
)
from dashkanban.detect.buttons import Button
from dashkanban.detect.presses import Press
from dashkanban.errors import ConfigError
from dashkanban.values import PressKind, Trigger

log = logging.getLogger(__name__)

_LONGEST_TIME = "2026-11-26T08:00:01.234+05:45"  # Event.c8y_time: always 29 characters


@dataclass(frozen=True, slots=True)
class Event:
    """An event as it goes to Cumulocity, and as `--jsonl` prints it."""

    time: datetime  # timezone-aware
    mac: str
    serial: str
    name: str
    type: str
    text: str
    trigger: Trigger
    # single, double or long (issue 19); kept in the outbox row (its `press_kind`, schema 3);
    # a row queued before that reads as "single".
    kind: PressKind = "single"

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
            "kind": self.kind,
        }

    def to_jsonl(self) -> str:
        return json.dumps(self.as_json(), ensure_ascii=False)

    @property
    def c8y_time(self) -> str:
        """Cumulocity's time field: milliseconds and an offset (docs/protocol.md 2.2)."""
        return self.time.isoformat(timespec="milliseconds")


def make_event(press: Press, settings: EventSettings) -> Event:
    """Fill the configured text template. It was rendered for every button at load
    (`check_event_text`); should it still fail, the press is never lost: it gets the default
    text, with a warning."""
    button = press.button
    try:
        text = render_event_text(settings.text, button, press.trigger, press.kind)
        if not text.strip():
            raise ValueError(EMPTY_TEXT_PROBLEM)
    except Exception as exc:  # noqa: BLE001 - whatever the template does, the press is kept
        text = render_event_text(DEFAULT_EVENT_TEXT, button, press.trigger, press.kind)
        log.warning(
            "[event] text %r cannot be rendered for button %r (%s: %s); sending %r instead",
            settings.text, button.name, type(exc).__name__, exc, text,
        )
    return Event(
        time=press.time,
        mac=button.mac,
        serial=button.serial,
        name=button.name,
        type=settings.type,
        text=text,
        trigger=press.trigger,
        kind=press.kind,
    )


def check_event_text(settings: Settings, buttons: Iterable[Button]) -> None:
    """Render `[event] text` for every button (issue 13): a template that fails for one, or
    whose `400` line would not fit in a message, is a ConfigError naming the key's line."""
    from dashkanban.c8y.smartrest import MAX_MESSAGE_BYTES, encode_line

    line = settings.key_lines.get(("event", "text"))
    for button in buttons:
        problem = event_text_problem(settings.event.text, button)
        if problem is None:
            text = render_event_text(settings.event.text, button, "dhcp")
            size = len(encode_line(400, settings.event.type, text, _LONGEST_TIME).encode())
            if size > MAX_MESSAGE_BYTES:
                problem = (f"its event line would be {size} bytes, over the {MAX_MESSAGE_BYTES} "
                           "bytes of one message")
        if problem is not None:
            raise ConfigError(
                f"[event] text = {settings.event.text[:100]}: cannot be rendered for button "
                f"{button.name[:60]!r}: {problem}",
                settings.path,
                line,
            )
