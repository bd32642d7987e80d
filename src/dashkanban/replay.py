"""`dashkanban replay CAPTURE`: the pipeline over a capture file, packet time as the clock.

Without --dry-run the presses also go through the Kanban loop when MACID.csv has bins (history,
and with `[kanban] alarms = yes` the alarm and clear lines in each press's outbox row), exactly as
in the daemon; a dry run touches neither the outbox nor the history.
"""

from __future__ import annotations

import argparse
import logging
import sys
from array import array
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TextIO

from dashkanban.buttons import Registry, load_buttons
from dashkanban.capture import Frame, open_capture
from dashkanban.config import Settings, find_config, load_settings
from dashkanban.errors import DashkanbanError
from dashkanban.events import Event
from dashkanban.pipeline import Pipeline
from dashkanban.presses import Lookup, Press

if TYPE_CHECKING:
    from dashkanban.c8y.rest import InventorySource
    from dashkanban.inventory import Lookups

log = logging.getLogger(__name__)


def build_pipeline(
    settings: Settings,
    registry: Registry,
    lookup: Lookup | None = None,
    *,
    inventory: Lookups | None = None,
) -> Pipeline:
    """The pipeline as configured. For MACs not in MACID.csv (`[buttons] source =
    inventory|both`): `lookup` asks Cumulocity synchronously (replay: packet time is the clock,
    so waiting changes nothing and the result is deterministic), `inventory` asynchronously
    (live: capture never waits for HTTP)."""
    return Pipeline(
        registry,
        settings.event,
        detect=settings.capture.detect,
        dead_time=settings.debounce_seconds,
        lookup=lookup,
        inventory=inventory,
    )


def load_registry(settings: Settings) -> Registry:
    """The CSV buttons, unless `[buttons] source = inventory` (then only Cumulocity knows them)."""
    if settings.buttons.source == "inventory":
        return Registry()
    return load_buttons(settings.buttons.file)


def inventory_lookup(settings: Settings) -> InventorySource | None:
    """The Cumulocity identity look-up for `[buttons] source = inventory | both` (blocking,
    cached; raises RestError when Cumulocity cannot tell, which fails a replay)."""
    if settings.buttons.source == "csv":
        return None
    from dashkanban.c8y.rest import InventorySource

    return InventorySource(settings)


def replay_command(args: argparse.Namespace) -> int:
    settings = load_settings(find_config(args.config))
    registry = load_registry(settings)
    source = inventory_lookup(settings)
    pipeline = build_pipeline(settings, registry, source)
    try:
        return _replay(args, settings, pipeline)
    finally:
        if source is not None:
            source.close()


def _replay(args: argparse.Namespace, settings: Settings, pipeline: Pipeline) -> int:
    capture = open_capture(args.capture, prefilter=True)
    found: list[tuple[Press, Event]] = []
    clock = PacketClock()  # the frames' times, for the Kanban overdue check (not in a dry run)
    frames = capture if args.dry_run else clock.frames(capture)
    events = _collect(pipeline, pipeline.run_presses(frames), found)
    try:
        if args.jsonl:
            _print_jsonl(events, sys.stdout)
        else:
            _print_table(events, sys.stdout)
    finally:
        # Also after a corrupt record: what was read before it has been printed, and counted.
        counts = pipeline.counts(capture.frames_read)
        print(f"{args.capture}: {counts.summary()}", file=sys.stderr)
    if args.dry_run:
        return 0
    return _send(settings, found, args.timeout, clock)


class PacketClock:
    """The time of every frame read (8 bytes each): the packet clock the Kanban overdue check
    runs on, at each frame and at the end of the capture."""

    def __init__(self) -> None:
        self.times = array("d")

    def frames(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        keep = self.times.append
        for frame in frames:
            keep(frame[0])
            yield frame


def _collect(
    pipeline: Pipeline, presses: Iterator[Press], into: list[tuple[Press, Event]]
) -> Iterator[Event]:
    for press in presses:
        event = pipeline.event_for(press)
        into.append((press, event))
        yield event


def _send(settings: Settings, found: list[tuple[Press, Event]], timeout: float,
          clock: PacketClock | None = None) -> int:
    """Queue the events (with their Kanban lines) in the outbox and wait up to `timeout` s for
    their PUBACKs (exit 3 when they could not all be delivered: they stay queued)."""
    from dashkanban.delivery import deliver
    from dashkanban.kanban.wiring import open_loop, press_lines, queue_overdue_at_frames
    from dashkanban.outbox import Outbox

    with Outbox.open(
        settings.outbox.path,
        max_rows=settings.outbox.max_rows,
        max_bytes=settings.outbox.max_bytes,
    ) as outbox:
        loop = open_loop(settings)  # after the outbox, which makes the state folder
        try:
            # The packet clock: the overdue check at each frame up to a press, before it, and
            # after the last press to the end of the capture; a replay raises the same alarms.
            times = sorted(clock.times) if loop is not None and clock is not None else []
            after = float("-inf")
            for press, event in found:
                if loop is not None:
                    now = press.time.timestamp()
                    queue_overdue_at_frames(loop, outbox.put_lines, times, after, now)
                    after = now
                extra, others = press_lines(loop, press) if loop is not None else ((), ())
                outbox.put(event, extra, others)
            if loop is not None and times:
                queue_overdue_at_frames(loop, outbox.put_lines, times, after, times[-1])
        finally:
            if loop is not None and loop.history is not None:
                loop.history.close()
        delivered = deliver(settings, outbox, [], timeout=timeout)
    if delivered is None:
        print(f"queued {len(found)} events: the running dashkanban service delivers them",
              file=sys.stderr)
    else:
        print(f"delivered {delivered} events to {settings.c8y.tenant}", file=sys.stderr)
    return 0


def _print_jsonl(events: Iterator[Event], out: TextIO) -> None:
    for event in events:
        out.write(event.to_jsonl() + "\n")
        out.flush()  # a consumer piping us sees each event as it is found


def _print_table(events: Iterator[Event], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Presses", title_justify="left")
    for column in ("time (UTC)", "button", "MAC", "trigger", "text"):
        table.add_column(column)
    error: DashkanbanError | None = None
    try:
        for event in events:
            table.add_row(
                event.time.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                event.name,
                event.mac,
                event.trigger,
                event.text,
            )
    except DashkanbanError as exc:  # show what was found before the file went bad, then fail
        error = exc
    # A pipe gets a fixed width wide enough for the whole row (rich would assume 80 columns).
    width = None if out.isatty() else 120
    Console(file=out, width=width, soft_wrap=False).print(table)
    if error is not None:
        raise error
