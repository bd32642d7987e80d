"""The Kanban loop in the pipeline: classify each press, keep it, and hand back its lines.

The one piece with state: which bins have an open reorder. It starts from the history, so a
restart of the daemon still knows that bin A3 is waiting for its refill.

Wiring (kanban/wiring.py does it for the daemon, `replay` and `kanban refilled`): each press's
lines travel with its event through the outbox, the lines for other devices (a refill's 306s)
in the same row:

    signal = loop.on_press(press)
    outbox.put(event, signal.lines_for(serial), device_lines(signal.lines_elsewhere(serial)))

Thread-safe. In `run` presses and operations both arrive on the daemon's writer thread.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from dashkanban.c8y.smartrest import SmartRestLine
from dashkanban.config import KanbanSettings
from dashkanban.detect.presses import Press
from dashkanban.errors import ConfigError
from dashkanban.kanban.alarms import (
    KIND_REFILL,
    KIND_REORDER,
    KIND_REPEAT,
    DevicePublish,
    OperationOutcome,
    Signal,
    clear_lines,
    handle_operation,
    operation_id,
    overdue_clear,
    overdue_lines,
    signal_for,
)
from dashkanban.kanban.analytics import SECONDS_PER_DAY, lead_time, replenishments
from dashkanban.kanban.bins import Bins
from dashkanban.kanban.history import History

log = logging.getLogger(__name__)

HANDLED_MEMORY = 1024


@dataclass(frozen=True, slots=True)
class Due:
    """A reorder open longer than its bin's lead time, not yet flagged."""

    bin: str
    serial: str  # the reorder button that made it: its device gets the alarm
    reordered: datetime
    lead_days: float


def find_overdue(
    bins: Bins,
    opened: Mapping[str, tuple[datetime, str]],
    samples: Mapping[str, Sequence[float]],
    raised: Mapping[str, str],
    min_samples: int,
    now: datetime,
) -> list[Due]:
    """The open reorders (`opened`: bin -> reorder time and button serial) older than the lead
    time used (measured median with `min_samples` replenishments, else `lead_time_days`), and
    not yet flagged (`raised`). Pure: the daemon calls it on a timer, replay on the packet clock.
    A bin with neither lead time is never overdue."""
    found = []
    for name, (since, serial) in sorted(opened.items()):
        bin_ = bins.get(name)
        if bin_ is None or name in raised:
            continue
        lead = lead_time(bin_.lead_time_days, samples.get(name, ()), min_samples).days
        if lead is not None and (now - since).total_seconds() > lead * SECONDS_PER_DAY:
            found.append(Due(name, serial, since, lead))
    return found


class KanbanLoop:
    """Presses in, signals out; every press is recorded in the history when there is one."""

    def __init__(self, bins: Bins, settings: KanbanSettings, history: History | None) -> None:
        self.bins = bins
        self.settings = settings
        self.history = history
        self._open: set[str] = set(history.active_bins()) if history else set()
        self._lock = threading.Lock()
        # Operation ids handled: `500` re-delivers an operation that is still PENDING after a
        # reconnect (its 504/506 may wait in the outbox), and it must clear its bin and report
        # once. Kept in the history (table `operations`), so also across a restart; here only
        # without a history. Bounded; an id older than the last HANDLED_MEMORY ones is long done.
        self._handled: OrderedDict[str, None] = OrderedDict()
        # For measured lead times and overdue bins: each open reorder (bin -> its time and the
        # button that made it), the replenishment times so far, the overdue alarms raised.
        self._opened: dict[str, tuple[datetime, str]] = {}
        self._samples: dict[str, list[float]] = {}
        self._overdue: dict[str, str] = {}
        if history is not None:
            presses = history.reorder_presses()
            done, opened = replenishments(
                [(b, t) for b, t, _ in presses], history.refill_times()
            )
            serial_at = {(b, t): serial for b, t, serial in reversed(presses)}
            self._opened = {b: (t, serial_at[(b, t)]) for b, t in opened.items()}
            for item in done:
                self._samples.setdefault(item.bin, []).append(item.days)
            self._overdue = history.open_overdue()

    def overdue(
        self, now: datetime, queue: Callable[[DevicePublish], object] | None = None
    ) -> tuple[DevicePublish, ...]:
        """Raise `c8y_KanbanOverdue` for each reorder open longer than its lead time at `now`,
        once per open reorder (kept in the history, so also once across restarts). Nothing with
        alarms off.

        `queue` (`wiring.queue_overdue` gives the outbox's) takes each alarm's lines before the
        alarm is recorded as raised: when it raises (a full outbox), that alarm and the ones
        after it are not recorded, so the next check raises them again instead of never, and
        the exception goes to the caller. Recorded but not queued cannot happen; queued but not
        recorded (the history failing just after) raises it once more, which Cumulocity
        de-duplicates into the active alarm (count + 1). Without `queue` the caller queues the
        lines returned."""
        if not self.settings.alarms:
            return ()
        with self._lock:
            self._sync_refills()
            due = find_overdue(self.bins, self._opened, self._samples, self._overdue,
                               self.settings.min_samples, now)
            found = []
            for item in due:
                bin_ = self.bins.get(item.bin)
                if bin_ is None:  # pragma: no cover - find_overdue only returns known bins
                    continue
                lines = overdue_lines(bin_, item.serial, self.settings.overdue_severity,
                                      item.reordered, item.lead_days, now)
                if queue is not None:
                    queue(lines)  # first: a refusal leaves it unrecorded, raised next time
                found.append(lines)
                self._overdue[item.bin] = item.serial
                if self.history is not None:
                    self.history.record_overdue(item.bin, item.serial, item.reordered, now)
                log.warning("overdue: bin %s reordered %s, lead time %.1f days",
                            item.bin, item.reordered.isoformat(timespec="seconds"),
                            item.lead_days)
            return tuple(found)

    def next_deadline(self) -> datetime | None:
        """The earliest moment an open, not yet flagged reorder becomes overdue (None: none can),
        so a caller checking at every frame need only check at the first frame past it."""
        if not self.settings.alarms:
            return None
        with self._lock:
            deadlines = []
            for name, (since, _) in self._opened.items():
                bin_ = self.bins.get(name)
                if bin_ is None or name in self._overdue:
                    continue
                lead = lead_time(bin_.lead_time_days, self._samples.get(name, ()),
                                 self.settings.min_samples).days
                if lead is not None:
                    deadlines.append(since + timedelta(days=lead))
            return min(deadlines, default=None)

    def _sync_refills(self) -> None:
        """Refills another process recorded (`kanban refilled` while the daemon runs) close the
        bins here too, so a bin refilled from the shell is not flagged overdue. Their lines,
        the overdue clear included, went out with that command."""
        if self.history is None:
            return
        for bin_name, time in self.history.last_refills().items():
            opened = self._opened.get(bin_name)
            if opened is not None and time >= opened[0]:
                self._refilled(bin_name, time)
                self._open.discard(bin_name)

    def _refilled(self, bin_name: str, time: datetime) -> tuple[DevicePublish, ...]:
        """Bookkeeping of a refill: one more replenishment measured, and the overdue alarm's
        clear when one was raised."""
        opened = self._opened.pop(bin_name, None)
        if opened is not None:
            days = (time - opened[0]).total_seconds() / SECONDS_PER_DAY
            self._samples.setdefault(bin_name, []).append(days)
        serial = self._overdue.pop(bin_name, None)
        if serial is None or not self.settings.alarms:
            return ()
        return (overdue_clear(serial),)

    @property
    def open_bins(self) -> frozenset[str]:
        return frozenset(self._open)

    def on_press(self, press: Press) -> Signal:
        with self._lock:
            return self._on_press(press)

    def _on_press(self, press: Press) -> Signal:
        signal = signal_for(press, self.bins, self.settings, self._open)
        if signal.kind == KIND_REORDER and signal.bin:
            self._open.add(signal.bin)
            self._opened.setdefault(signal.bin, (press.time, press.button.serial))
            log.info("reorder: bin %s (%s)", signal.bin, press.button.name)
        elif signal.kind == KIND_REPEAT:
            log.info(
                "repeat: bin %s pressed again by %s while its reorder is open",
                signal.bin,
                press.button.name,
            )
        elif signal.kind == KIND_REFILL and signal.bin:
            self._open.discard(signal.bin)
            extra = self._refilled(signal.bin, press.time)
            if extra:
                signal = Signal(signal.kind, signal.bin, signal.publishes + extra)
            log.info("refill: bin %s (%s)", signal.bin, press.button.name)
        if self.history is not None:
            self.history.record_press(press, signal.kind, signal.bin)
        return signal

    def on_operation(self, line: SmartRestLine, gateway_serial: str, now: datetime) -> (
        OperationOutcome | None
    ):
        """A downstream line: if it is a refill operation, close the bin and return the lines.

        The caller queues the lines in the outbox at once, so the refill is stored as sent.
        """
        with self._lock:
            return self._on_operation(line, gateway_serial, now)

    def _on_operation(self, line: SmartRestLine, gateway_serial: str, now: datetime) -> (
        OperationOutcome | None
    ):
        op_id = operation_id(line)
        if op_id is not None:
            answer = self._known(op_id)
            if answer == ():
                log.info("operation %s delivered again: already handled", op_id)
                return None
            if answer is not None:
                # Handled, but its answer never reached the outbox (full, or a crash): hand the
                # same answer out again, without refilling the bin a second time.
                log.info("operation %s delivered again: its answer is queued now", op_id)
                return OperationOutcome(None, answer, op_id)
        outcome = handle_operation(line, self.bins, gateway_serial)
        if outcome is None:
            return None
        bin_name = outcome.bin
        if bin_name is not None:
            self._open.discard(bin_name)
            extra = self._refilled(bin_name, now)
            if extra:
                outcome = OperationOutcome(bin_name, outcome.publishes + extra)
            log.info("refill: bin %s (operation)", bin_name)
        if op_id is None:  # by fragment (501-503): nothing to recognise it by when it comes again
            if self.history is not None and bin_name is not None:
                self.history.record_refill(bin_name, now, "operation")
            return outcome
        if self.history is not None:
            # The id, the refill and the answer in one transaction: a restart knows all or none.
            self.history.record_operation(op_id, now, outcome.publishes, bin_name)
        else:
            self._handled[op_id] = None
            while len(self._handled) > HANDLED_MEMORY:
                self._handled.popitem(last=False)
        return OperationOutcome(bin_name, outcome.publishes, op_id)

    def _known(self, op_id: str) -> tuple[DevicePublish, ...] | None:
        """None: a new operation; (): handled and answered; else its answer still to queue."""
        if self.history is not None:
            return self.history.operation(op_id)
        return () if op_id in self._handled else None

    def answer_queued(self, outcome: OperationOutcome) -> None:
        """The outbox has an operation's answer (the router calls this once it queued it): a
        re-delivery of the operation is now answered by nothing."""
        if outcome.operation is not None and self.history is not None:
            self.history.answer_queued(outcome.operation)


def refill_from_cli(bins: Bins, bin_name: str, history: History, now: datetime) -> tuple[
    str, int, Signal
]:
    """`dashkanban kanban refilled BIN`: store the refill with its 306 lines as pending clear.

    Returns the bin's name as written in MACID.csv, the refill's row id and the lines.
    """
    bin_ = bins.find(bin_name)
    if bin_ is None:
        known = ", ".join(bins.names) or "none (add a bin column to MACID.csv)"
        raise ConfigError(f"unknown bin {bin_name!r} (known bins: {known})")
    publishes = clear_lines(bin_)
    serial = history.open_overdue().get(bin_.name)
    if serial is not None:
        publishes += (overdue_clear(serial),)
    row = history.record_refill(bin_.name, now, "cli", publishes)
    return bin_.name, row, Signal(KIND_REFILL, bin_.name, publishes)
