"""`dashkanban replay CAPTURE`: the pipeline over a capture file, packet time as the clock.

Without --dry-run the presses also go through the Kanban loop when MACID.csv has bins (history,
and with `[kanban] alarms = yes` the alarm and clear lines in each press's outbox row), exactly as
in the daemon; a dry run touches neither the outbox nor the history, nor imports them (the outbox
and sqlite3 are imported where presses are sent: a dry run's start-up is part of its time).
"""

from __future__ import annotations

import gc
import logging
import sys
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from dashkanban.capture import Frame, open_capture
from dashkanban.capture.filters import file_program
from dashkanban.compose import (
    StillQueuedError,
    build_pipeline,
    inventory_lookup,
    load_registry,
    queue_presses,
    write_fragments,
)
from dashkanban.config import Settings, find_config, load_settings
from dashkanban.detect.buttons import Registry
from dashkanban.detect.events import Event
from dashkanban.detect.pipeline import Pipeline
from dashkanban.detect.presses import Press
from dashkanban.errors import CaptureError, DashkanbanError

if TYPE_CHECKING:
    from dashkanban.capture.bpf import Program

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """`dashkanban replay`'s arguments (cli.py builds them)."""

    capture: Path
    dry_run: bool
    jsonl: bool
    timeout: float
    again: bool
    config: Path | None = None


def replay_command(args: ReplayOptions) -> int:
    settings = _settings(args)
    registry = load_registry(settings)
    source = inventory_lookup(settings)
    pipeline = build_pipeline(settings, registry, source)
    program = _program(args, settings, registry)
    # What exists now (modules, settings, the pipeline) lives until the process ends: frozen,
    # no garbage collection walks it again, the one at exit included (~6 ms of a replay's
    # whole-process time, which issue 16 measures against tcpdump's).
    gc.freeze()
    try:
        return _replay(args, settings, pipeline, program)
    finally:
        if source is not None:
            source.close()


def _program(args: ReplayOptions, settings: Settings, registry: Registry) -> Program:
    """The live program, except where the Kanban overdue check runs on the packet clock (bins,
    and not a dry run): that clock must tick with every candidate frame, not only the buttons'
    (a bin is overdue at the first frame past its deadline, whoever sent it)."""
    if not args.dry_run:
        from dashkanban.kanban.wiring import load_kanban_bins

        if len(load_kanban_bins(settings)):
            from dashkanban.capture.bpf import candidate_program

            return candidate_program(settings.capture.detect)
    return file_program(settings, registry)


def _settings(args: ReplayOptions) -> Settings:
    """The settings, checked for an uplink when this replay talks to Cumulocity: to send, or to
    look buttons up in the inventory (known only after reading the config, so a dry run reads it
    as needing no uplink first, and once more only for the inventory)."""
    path = find_config(args.config)
    if args.dry_run:
        settings = load_settings(path, uplink=False)
        if settings.buttons.source == "csv":
            return settings
    return load_settings(path, uplink=True)


def _replay(
    args: ReplayOptions, settings: Settings, pipeline: Pipeline, program: Program | None = None
) -> int:
    capture = open_capture(args.capture, prefilter=True, program=program)
    found: list[tuple[Press, Event]] = []
    clock = PacketClock()  # the frames' times, for the Kanban overdue check (not in a dry run)
    frames = capture if args.dry_run else clock.frames(capture)
    events = _collect(pipeline, pipeline.run_presses(frames), found)
    corrupt: CaptureError | None = None
    try:
        if args.jsonl:
            _print_jsonl(events, sys.stdout)
        else:
            _print_table(events, sys.stdout)
    except CaptureError as exc:  # corrupt in the middle: what came before is still sent
        corrupt = exc
    finally:
        # Also after a corrupt record: what was read before it has been printed, and counted.
        counts = pipeline.counts(capture.frames_read)
        print(f"{args.capture}: {counts.summary(capture.read_summary())}", file=sys.stderr)
        if capture.cut_off is not None:
            print(f"warning: {args.capture}: ends inside a record at byte {capture.cut_off} "
                  "(the capture was cut off)", file=sys.stderr)
    if args.dry_run:
        if corrupt is not None:
            raise corrupt
        return 0
    try:
        delivered = _send(settings, found, args.timeout, clock, again=args.again)
    except DashkanbanError as exc:
        if corrupt is not None:
            raise StillQueuedError(f"{corrupt}; and the presses before it: {exc}",
                                   exc.exit_code) from None
        raise
    if corrupt is not None:
        from dashkanban.outbox.store import plural

        were = "was" if len(found) == 1 else "were"
        how = "delivered" if delivered else "queued for the running dashkanban service"
        raise CaptureError(f"{corrupt}; {plural(len(found), 'press')} before it {were} {how}")
    return 0


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
          clock: PacketClock | None = None, *, again: bool = False) -> bool:
    """Queue the events (with their Kanban lines) in the outbox, each press once (docs/outbox.md: a
    press already queued or delivered is skipped, unless `again`), and wait up to `timeout` s
    for their PUBACKs (exit 3 when they could not all be delivered: they stay queued).
    Returns True when they were delivered, False when queued for the running service."""
    from dashkanban.compose import deliver_explained
    from dashkanban.outbox.store import Outbox, plural, press_key

    with Outbox.from_settings(settings.outbox) as outbox:
        fresh = found
        if not again:
            seen = outbox.seen(press_key(event) for _, event in found)
            fresh = [(p, e) for p, e in found if press_key(e) not in seen]
            if seen:
                print(_skipped(len(found), list(seen.values())), file=sys.stderr)
        # The packet clock: the Kanban overdue check runs at the capture's frames.
        bins = queue_presses(settings, outbox, fresh, sorted(clock.times) if clock else ())
        outbox.remember(press_key(event) for _, event in fresh)
        delivered = deliver_explained(settings, outbox, timeout=timeout)
    if delivered is not None and bins is not None:
        write_fragments(settings, bins, [press for press, _ in fresh])
    if delivered is None:
        print(f"queued {plural(len(fresh), 'event')}: the running dashkanban service "
              "delivers them", file=sys.stderr)
    else:
        print(f"delivered {plural(delivered, 'event')} to {settings.c8y.tenant}", file=sys.stderr)
    return delivered is not None


def _skipped(total: int, states: list[str]) -> str:
    """e.g. "7 presses, 7 already delivered: skipped" (stderr, before sending)."""
    from dashkanban.outbox.store import plural

    parts = []
    for state in ("queued", "delivered"):
        n = states.count(state)
        if n:
            parts.append(f"{n} already {state}")
    return (f"{plural(total, 'press')}, {' and '.join(parts)}: skipped "
            "(--again queues them once more)")


def _print_jsonl(events: Iterator[Event], out: TextIO) -> None:
    for event in events:
        out.write(event.to_jsonl() + "\n")
        out.flush()  # a consumer piping us sees each event as it is found


def _print_table(events: Iterator[Event], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    from dashkanban.safetext import plain

    table = Table(title="Presses", title_justify="left")
    for column in ("time (UTC)", "button", "MAC", "trigger", "text"):
        table.add_column(column)
    error: DashkanbanError | None = None
    try:
        for event in events:
            table.add_row(  # names and texts are data, never markup (safetext)
                event.time.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                plain(event.name),
                event.mac,
                event.trigger,
                plain(event.text),
            )
    except DashkanbanError as exc:  # show what was found before the file went bad, then fail
        error = exc
    # A pipe gets a fixed width wide enough for the whole row (rich would assume 80 columns).
    width = None if out.isatty() else 120
    Console(file=out, width=width, soft_wrap=False).print(table)
    if error is not None:
        raise error
