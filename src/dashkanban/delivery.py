"""The Courier: carries outbox rows to Cumulocity through the uplink, oldest first.

A row is deleted (`ack`) only on its PUBACK. What was in flight when a connection dropped is sent
again from the outbox: Cumulocity requires a clean session (protocol notes 1.4 and 5), so no broker
or paho session can be trusted to do it. Delivery is therefore at least once, in press order, with
at most `window` messages awaiting a PUBACK.

The outbox is consumed through the interface agreed with the outbox (issue 6); `OutboxLike` below
states exactly the part used here, so this module does not depend on the SQLite implementation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Protocol

from dashkanban.c8y.mqtt import MAX_REFUSALS, DeviceLine, Refusal, UnsendableError, Uplink
from dashkanban.config import Settings
from dashkanban.errors import DashkanbanError, UndeliveredError, UplinkError
from dashkanban.events import Event
from dashkanban.outbox import OutboxError, plural

log = logging.getLogger(__name__)

WINDOW = 100  # messages awaiting PUBACK at once
IDLE_POLL = 1.0  # seconds; a safety net only: every change also wakes the loop
# How long a one-shot command waits after its last PUBACK for `s/e` errors: Cumulocity
# acknowledges a PUBLISH when it accepts it and processes it afterwards (protocol notes 1.5), so
# a refusal comes after the PUBACK. Fixed and short: a later error is still logged and counted
# by `run`, not by a command that has ended (docs/outbox.md).
REFUSAL_GRACE = 1.0

DeliveredObserver = Callable[[Event], None]


class QueuedRow(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def event(self) -> Event | None: ...
    @property
    def extra_lines(self) -> tuple[str, ...]: ...
    @property
    def other_lines(self) -> tuple[DeviceLine, ...]: ...


class OutboxLike(Protocol):
    def put(self, event: Event, extra_lines: Sequence[str] = (),
            other_lines: Sequence[DeviceLine] = ()) -> int: ...
    def put_lines(self, lines: Sequence[DeviceLine], time: datetime) -> int: ...
    def peek(self, limit: int = 100, after_id: int = 0) -> Sequence[QueuedRow]: ...
    def ack(self, row_id: int) -> None: ...
    def mark_attempt(self, row_id: int, error: str | None = None) -> None: ...
    def count(self) -> int: ...
    def record_c8y_refusal(self, error: str, line: str) -> None: ...


class RefusedByCumulocityError(DashkanbanError):
    """Cumulocity refused some of the lines it had accepted (errors on `s/e`): exit 1. The rows
    are gone from the outbox (their PUBACK came), and sending them again would be refused
    again; the ERROR lines before this say which, `outbox status` counts them."""


class Courier:
    """Runs one thread that keeps up to `window` outbox rows in flight through `uplink`."""

    def __init__(self, outbox: OutboxLike, uplink: Uplink, *, window: int = WINDOW,
                 on_delivered: DeliveredObserver | None = None,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        """`on_delivered(event)`, if given, is told of each event the moment its PUBACK arrives
        (in the MQTT network thread, before its row is removed): for measurements such as
        bench/latency.py. It must be quick; an exception from it is logged and ignored.

        `on_failure(exc)`, if given, is told when the loop fails unexpectedly (a bug, not a
        connection or a full disk); the loop then ends, and the daemon exits 1 so that systemd
        restarts it. Without it such a failure is logged and the loop carries on."""
        if window < 1:
            raise ValueError("window must be at least 1")
        self._outbox = outbox
        self._observer = on_delivered
        self._on_failure = on_failure
        self._uplink = uplink
        self._window = window
        self._cond = threading.Condition()
        self._dirty = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._cursor = 0  # every row with id <= cursor is in flight, delivered or refused
        self._inflight: set[int] = set()
        self._refused: set[int] = set()  # too large: kept in the outbox, never sent
        # PUBACK came but the row could not be deleted (a full disk): delivered, so never sent
        # again by this process; the delete is retried before anything new goes out.
        self._unsaved_acks: set[int] = set()
        self._rewind = False  # something was lost: start again from the oldest row
        self.delivered = 0
        self.resent = 0
        self.refused_by_c8y = 0  # lines Cumulocity refused on `s/e` while this Courier ran
        self.rows_refused_by_c8y: set[int] = set()  # the outbox rows those lines came from
        self.last_ack = time.monotonic()  # of the last PUBACK, for REFUSAL_GRACE

    def start(self) -> None:
        if self._thread is not None:
            return
        self._uplink.add_listener(self.wake)
        self._uplink.add_refusal_listener(self._refused_by_c8y)
        # A thread until `run` is one event loop (docs/architecture.md): the outbox reads and
        # the wait for room in the window must not hold up capture.
        self._thread = threading.Thread(target=self._run, name="courier", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """The loop's thread still runs (for the systemd watchdog)."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Something changed: a new row, a PUBACK, a connection came up or went down."""
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def put(self, event: Event, extra_lines: Sequence[str] = (),
            other_lines: Sequence[DeviceLine] = ()) -> int:
        """Queue durably, then wake the loop. Returns the row id."""
        row_id = self._outbox.put(event, extra_lines, other_lines)
        self.wake()
        return row_id

    def put_lines(self, lines: Sequence[DeviceLine], time: datetime) -> int:
        """Queue lines without an event durably, then wake the loop. Returns the row id."""
        row_id = self._outbox.put_lines(lines, time)
        self.wake()
        return row_id

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty but for refused rows. False when `timeout` seconds pass
        first, or at once when the uplink has given up (a refused login: see `uplink.failed`)."""
        deadline = time.monotonic() + timeout
        self.wake()
        while self._outbox.count() > self.refused or self.in_flight > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._uplink.failed is not None:
                return False
            with self._cond:
                self._cond.wait(min(remaining, IDLE_POLL))
        return True

    @property
    def refused(self) -> int:
        """Rows that can never be sent as they are (too large): they stay queued, and waiting
        for them would only run out the clock (`outbox status` shows them)."""
        with self._cond:
            return len(self._refused)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._inflight)

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._stopping:
                    self._cond.wait(IDLE_POLL)
                    if not self._dirty:
                        self._dirty = True  # poll now and then even if nobody woke us
                if self._stopping:
                    return
                self._dirty = False
            try:
                self._pump()
            except (UplinkError, OutboxError, OSError):
                # Expected trouble (the uplink stopping, the disk): keep carrying.
                log.exception("delivery loop failed; retrying")
                time.sleep(IDLE_POLL)
                self.wake()
            except Exception as exc:
                if self._on_failure is not None:
                    self._on_failure(exc)  # the supervisor logs it and ends the process
                    return
                log.exception("delivery loop failed; retrying")
                time.sleep(IDLE_POLL)
                self.wake()

    def _pump(self) -> None:
        if self._unsaved_acks and not self._save_acks():
            return  # the outbox cannot be written: sending more would only pile up such rows
        with self._cond:
            if self._rewind:
                self._rewind = False
                self._cursor = 0
            room = self._window - len(self._inflight)
            if room <= 0:
                return
            skip = self._inflight | self._refused | self._unsaved_acks
            cursor = self._cursor
        # Only skipped rows past the cursor take room in the page: reading `window` rows (and
        # decoding them) for every single PUBACK held the drain under 1,000 events/s.
        ahead = sum(1 for row_id in skip if row_id > cursor)
        rows = self._outbox.peek(limit=room + ahead, after_id=cursor)
        for row in rows:
            if row.id in skip:
                continue
            if room <= 0:
                break
            with self._cond:
                self._inflight.add(row.id)
            try:
                if row.event is None:
                    sent = self._uplink.send_lines(
                        row.other_lines,
                        on_delivered=partial(self._delivered, row.id, None),
                        on_lost=partial(self._lost, row.id),
                        row=row.id,
                    )
                else:
                    sent = self._uplink.send(
                        row.event,
                        row.extra_lines,
                        on_delivered=partial(self._delivered, row.id, row.event),
                        on_lost=partial(self._lost, row.id),
                        other_lines=row.other_lines,
                        row=row.id,
                    )
            except UnsendableError as exc:
                with self._cond:
                    self._inflight.discard(row.id)
                    self._refused.add(row.id)
                self._outbox.mark_attempt(row.id, str(exc))
                log.error("outbox row %d cannot be sent and stays queued: %s", row.id, exc)
                continue
            except Exception:
                # Anything else (the uplink stopping under us, say): the row is not in flight,
                # so send it again from the oldest, in order, on the next turn of the loop.
                with self._cond:
                    self._inflight.discard(row.id)
                    self._rewind = True
                raise
            if not sent:
                # Its connection is not ready: stop here to keep press order, and wait for the
                # uplink's state listener to wake us.
                with self._cond:
                    self._inflight.discard(row.id)
                return
            room -= 1
            with self._cond:
                self._cursor = max(self._cursor, row.id)

    def _delivered(self, row_id: int, event: Event | None) -> None:
        # Runs in the MQTT network thread, exactly on PUBACK.
        if event is not None and self._observer is not None:
            try:
                self._observer(event)
            except Exception:  # an observer must never cost a delivery
                log.exception("the on_delivered observer failed")
        try:
            self._outbox.ack(row_id)
        except OutboxError as exc:
            # Delivered all the same. Keep the row out of this process's sends and retry the
            # delete from the loop; if we die first, the next start sends it again (a duplicate
            # for a PUBACK that never reached the file, docs/outbox.md).
            log.error("outbox row %d was delivered but cannot be removed yet: %s", row_id, exc)
            with self._cond:
                self._unsaved_acks.add(row_id)
        if event is None:  # a row of lines only
            log.info("outbox row %d (SmartREST lines) delivered", row_id)
            self._done(row_id)
            return
        # The one line per press that says it arrived (issue 7): name, MAC, press time, result.
        with self._cond:
            refused = row_id in self.rows_refused_by_c8y  # its `s/e` came before the PUBACK
        log.info("%s (%s) pressed at %s: %s", event.name, event.mac, event.c8y_time,
                 "acknowledged, but refused by Cumulocity" if refused else "delivered")
        self._done(row_id)

    def _refused_by_c8y(self, refusal: Refusal) -> None:
        # Runs in the MQTT network thread, after the uplink logged the ERROR line. The row is
        # not kept or sent again: Cumulocity would refuse the same line again.
        with self._cond:
            self.refused_by_c8y += 1
            if refusal.sent.row is not None:
                self.rows_refused_by_c8y.add(refusal.sent.row)
        try:
            self._outbox.record_c8y_refusal(refusal.error, refusal.sent.line)
        except OutboxError as exc:
            log.error("cannot count the refusal by Cumulocity in the outbox: %s", exc)

    def _done(self, row_id: int) -> None:
        with self._cond:
            self._inflight.discard(row_id)
            self.last_ack = time.monotonic()
            self.delivered += 1
            self._dirty = True
            self._cond.notify_all()

    def _save_acks(self) -> bool:
        """Retry the deletes of delivered rows; True when none is left to do."""
        with self._cond:
            pending = sorted(self._unsaved_acks)
        for row_id in pending:
            try:
                self._outbox.ack(row_id)
            except OutboxError:
                return False  # the loop polls again within IDLE_POLL
            with self._cond:
                self._unsaved_acks.discard(row_id)
        log.info("the outbox is writable again: %d delivered rows removed", len(pending))
        return True

    def _lost(self, row_id: int) -> None:
        # The connection dropped before the PUBACK: send it again from the outbox, in order.
        self._outbox.mark_attempt(row_id, "connection lost before PUBACK")
        with self._cond:
            self._inflight.discard(row_id)
            self._rewind = True
            self.resent += 1
            self._dirty = True
            self._cond.notify_all()


def deliver(settings: Settings, outbox: OutboxLike, events: Iterable[Event], *,
            timeout: float, extra_lines: Callable[[Event], Sequence[str]] | None = None,
            max_refusals: int = MAX_REFUSALS) -> int | None:
    """Queue `events`, deliver everything in the outbox, and wait up to `timeout` seconds.

    For one-shot commands (`replay`, `outbox flush`, `test-button`). Returns how many rows were
    delivered, or None when a running `dashkanban run` holds the outbox (see `delivery_lock`):
    then the events are only queued, and it sends them. Raises the uplink's refusal (exit 1)
    when the login is refused, and UndeliveredError (exit 3) when rows are still queued at the
    deadline; they stay in the outbox.
    """
    from dashkanban.outbox import delivery_lock

    with delivery_lock(settings.outbox.path, wait=False) as ours:
        if not ours:
            for event in events:
                outbox.put(event, extra_lines(event) if extra_lines is not None else ())
            log.info("dashkanban run is delivering from %s: queued for it", settings.outbox.path)
            return None
        return _deliver(settings, outbox, events, timeout=timeout, extra_lines=extra_lines,
                        max_refusals=max_refusals)


def _deliver(settings: Settings, outbox: OutboxLike, events: Iterable[Event], *,
             timeout: float, extra_lines: Callable[[Event], Sequence[str]] | None,
             max_refusals: int) -> int:
    uplink = Uplink(settings, max_refusals=max_refusals)
    courier = Courier(outbox, uplink)
    for event in events:
        outbox.put(event, extra_lines(event) if extra_lines is not None else ())
    uplink.start()
    courier.start()
    try:
        drained = courier.drain(timeout)
        if drained and courier.delivered:
            # Errors on `s/e` follow the PUBACK: wait for them before saying "delivered".
            time.sleep(max(0.0, courier.last_ack + REFUSAL_GRACE - time.monotonic()))
    finally:
        courier.stop()
        uplink.stop()
    if uplink.failed is not None:
        raise uplink.failed
    if not drained:
        why = f" ({uplink.last_error})" if uplink.last_error is not None else ""
        # How many stay queued and the ways out: outbox.deliver_explained adds them.
        raise UndeliveredError(f"not delivered within {timeout:g} s{why}")
    if courier.refused:
        raise UndeliveredError(
            f"{courier.refused} cannot be sent as they are "
            "(over Cumulocity's size limit: see `dashkanban outbox status`)"
        )
    refused = len(courier.rows_refused_by_c8y)
    if refused:
        # Not "delivered N events", exit 0 (issue 13): the PUBACKs came, the events did not
        # arrive. Exit 1, a failure; not 3, since nothing stays queued to be flushed.
        raise RefusedByCumulocityError(
            f"Cumulocity refused {refused} of the {plural(courier.delivered, 'event')} it "
            "acknowledged (the ERROR lines above say which and why; `dashkanban outbox status` "
            "counts them); they are not sent again"
        )
    return courier.delivered
