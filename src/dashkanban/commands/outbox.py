"""The `dashkanban outbox` commands (status, flush, drop).

They sit above both the outbox and the Courier (outbox/courier.py), which is why they are not in
outbox/store.py: the Courier consumes the outbox, so the outbox must not import the Courier back.
The queue-then-deliver helper the one-shot commands share (`deliver_explained`) is in compose.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dashkanban.errors import ConfigError
from dashkanban.outbox.store import Outbox, delivery_lock, format_status, plural

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StatusOptions:
    """`dashkanban outbox status`'s arguments (cli.py builds them)."""

    config: Path | None = None


@dataclass(frozen=True, slots=True)
class FlushOptions:
    """`dashkanban outbox flush`'s arguments (cli.py builds them)."""

    timeout: float
    config: Path | None = None


@dataclass(frozen=True, slots=True)
class DropOptions:
    """`dashkanban outbox drop`'s arguments (cli.py builds them): the events of `button`,
    those pressed `before` a time, or (neither) all."""

    button: str | None
    before: str | None
    config: Path | None = None


def status_command(args: StatusOptions) -> int:
    """`dashkanban outbox status`: count, oldest press, bytes, refusals, last error. Exit 0."""
    from dashkanban.config import find_config, load_settings

    settings = load_settings(find_config(args.config))
    path = settings.outbox.path
    if not path.exists():
        print(f"outbox: {path} (not created yet)")
        print("queued: 0 events")
        return 0
    with Outbox.from_settings(settings.outbox) as outbox:
        print(format_status(outbox.path, outbox.stats(), outbox.max_rows, outbox.max_bytes))
    _print_uplink_state(path)
    from dashkanban.mqtt_buttons.battery import read_levels, status_lines

    for line in status_lines(read_levels(path)):  # MQTT buttons' last levels (issue 19)
        print(line)
    return 0


def _print_uplink_state(path: Path) -> None:
    """The running service's uplink, from the state it writes next to the outbox (issue 11)."""
    from dashkanban.health import read_state, status_lines

    state = read_state(path)
    if state is None:
        return
    with delivery_lock(path, wait=False) as ours:
        running = not ours  # the service holds the lock while it runs
    for line in status_lines(state, running=running):
        print(line)


def flush_command(args: FlushOptions) -> int:
    """`dashkanban outbox flush`: deliver what is queued now. Exit 0, or 3 when it cannot."""
    from dashkanban.compose import deliver_explained
    from dashkanban.config import find_config, load_settings

    settings = load_settings(find_config(args.config))
    path = settings.outbox.path
    if not path.exists():
        print("outbox: nothing queued")
        return 0
    with Outbox.from_settings(settings.outbox) as outbox:
        queued = outbox.count()
        if queued == 0:
            print("outbox: nothing queued")
            return 0
        delivered = deliver_explained(settings, outbox, timeout=args.timeout)
    if delivered is None:
        print(f"outbox: {plural(queued, 'event')} queued; the running dashkanban service is "
              "delivering them")
    else:
        print(f"outbox: delivered {plural(delivered, 'event')}")
    return 0


def parse_time(text: str) -> datetime:
    """`--before`: a date (midnight UTC) or an ISO 8601 time (UTC unless it has an offset)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--before {text!r}: expected a date (YYYY-MM-DD) or a time "
            "(e.g. 2026-11-26T08:00:00+01:00)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


MAX_LISTED = 50  # dropped events listed one a line; beyond that, counted


def drop_command(args: DropOptions) -> int:
    """`dashkanban outbox drop --all | --button NAME|MAC | --before TIME`: discard queued
    events, printing each one dropped. Exit 0 (also when nothing matched)."""
    from dashkanban.config import find_config, load_settings

    settings = load_settings(find_config(args.config), uplink=False)
    before = parse_time(args.before) if args.before is not None else None
    path = settings.outbox.path
    if not path.exists():
        print("outbox: nothing queued, nothing dropped")
        return 0
    with Outbox.from_settings(settings.outbox) as outbox:
        dropped = outbox.drop(button=args.button, before=before)
        left = outbox.count()
    for row in dropped[:MAX_LISTED]:
        e = row.event
        what = (f"{len(row.other_lines)} SmartREST lines" if e is None
                else f"{e.c8y_time} {e.name} ({e.mac}) {e.type}"
                f"{'' if e.kind == 'single' else f' {e.kind} press'}")
        print(f"dropped: {what}")
    if len(dropped) > MAX_LISTED:
        print(f"dropped: ... and {len(dropped) - MAX_LISTED} more")
    print(f"outbox: dropped {plural(len(dropped), 'event')}, {left} still queued")
    return 0
