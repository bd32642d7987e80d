"""The Kanban loop in the pipeline: classify each press, keep it, and hand back its lines.

The one piece with state: which bins have an open reorder. It starts from the history, so a
restart of the daemon still knows that bin A3 is waiting for its refill.

Wiring (kanban/wiring.py does it for the daemon, `replay` and `kanban refilled`): each press's
lines travel with its event through the outbox, the lines for other devices (a refill's 306s)
in the same row:

    signal = loop.on_press(press)
    outbox.put(event, signal.lines_for(serial), device_lines(signal.lines_elsewhere(serial)))

Thread-safe: presses arrive on the capture thread, operations on the MQTT network thread.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from datetime import datetime

from dashkanban.c8y.smartrest import SmartRestLine
from dashkanban.config import KanbanSettings
from dashkanban.errors import ConfigError
from dashkanban.kanban.alarms import (
    KIND_REFILL,
    KIND_REORDER,
    KIND_REPEAT,
    OperationOutcome,
    Signal,
    clear_lines,
    handle_operation,
    operation_id,
    signal_for,
)
from dashkanban.kanban.bins import Bins
from dashkanban.kanban.history import History
from dashkanban.presses import Press

log = logging.getLogger(__name__)

HANDLED_MEMORY = 1024


class KanbanLoop:
    """Presses in, signals out; every press is recorded in the history when there is one."""

    def __init__(self, bins: Bins, settings: KanbanSettings, history: History | None) -> None:
        self.bins = bins
        self.settings = settings
        self.history = history
        self._open: set[str] = set(history.active_bins()) if history else set()
        self._lock = threading.Lock()
        # Operation ids handled since start: `500` re-delivers an operation that is still PENDING
        # after a reconnect (its 504/506 may wait in the outbox), and it must clear its bin and
        # report once. Bounded; an id older than the last HANDLED_MEMORY ones is long done.
        self._handled: OrderedDict[str, None] = OrderedDict()

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
            log.info("reorder: bin %s (%s)", signal.bin, press.button.name)
        elif signal.kind == KIND_REPEAT:
            log.info(
                "repeat: bin %s pressed again by %s while its reorder is open",
                signal.bin,
                press.button.name,
            )
        elif signal.kind == KIND_REFILL and signal.bin:
            self._open.discard(signal.bin)
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
        if op_id is not None and op_id in self._handled:
            log.info("operation %s delivered again: already handled", op_id)
            return None
        outcome = handle_operation(line, self.bins, gateway_serial)
        if outcome is not None and op_id is not None:
            self._handled[op_id] = None
            while len(self._handled) > HANDLED_MEMORY:
                self._handled.popitem(last=False)
        if outcome is not None and outcome.bin is not None:
            self._open.discard(outcome.bin)
            if self.history is not None:
                self.history.record_refill(outcome.bin, now, "operation")
            log.info("refill: bin %s (operation)", outcome.bin)
        return outcome


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
    row = history.record_refill(bin_.name, now, "cli", publishes)
    return bin_.name, row, Signal(KIND_REFILL, bin_.name, publishes)
