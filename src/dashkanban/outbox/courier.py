"""The Courier: carries outbox rows to Cumulocity through the uplink, oldest first.

A row is deleted (`ack`) only on its PUBACK. What was in flight when a connection dropped is sent
again from the outbox: Cumulocity requires a clean session (docs/protocol.md 1.4 and 5), so no
broker or paho session can be trusted to do it. Delivery is therefore at least once, in press order,
with at most `window` messages awaiting a PUBACK.

The outbox is consumed through the interface agreed with the outbox (issue 6); `OutboxLike` below
states exactly the part used here, so this module does not depend on the SQLite implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Protocol

from dashkanban.c8y.link import ConnectionLostError
from dashkanban.c8y.mqtt import MAX_REFUSALS, DeviceLine, Refusal, UnsendableError, Uplink
from dashkanban.config import Settings
from dashkanban.detect.events import Event
from dashkanban.errors import DashkanbanError, UndeliveredError, UplinkError
from dashkanban.outbox.store import OutboxError, plural
from dashkanban.outbox.writer import Writer

log = logging.getLogger(__name__)

WINDOW = 100  # messages awaiting PUBACK at once
IDLE_POLL = 1.0  # seconds; a safety net only: every change also wakes the loop
# How long a one-shot command waits after its last PUBACK for `s/e` errors: Cumulocity
# acknowledges a PUBLISH when it accepts it and processes it afterwards (docs/protocol.md 1.5), so
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
    """Keeps up to `window` outbox rows in flight through `uplink`: `run()` on the event loop.

    Every outbox call goes through `writer` (the outbox's one writer thread, outbox/writer.py), so
    the loop never waits for the disk and the outbox has exactly one writer. The methods are called
    on the loop; `run()` returns only when cancelled and raises on an unexpected failure (a bug,
    not a connection or a full disk), which ends `run` with exit 1 so that systemd restarts it.
    """

    def __init__(self, outbox: OutboxLike, uplink: Uplink, *, writer: Writer,
                 window: int = WINDOW,
                 on_delivered: DeliveredObserver | None = None) -> None:
        """`on_delivered(event)`, if given, is told of each event the moment its PUBACK arrives
        (on the loop, counted in `delivered` but before its row is removed): for measurements
        such as bench/latency.py. It must be quick; an exception from it is logged and ignored.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        self._outbox = outbox
        self._writer = writer
        self._observer = on_delivered
        self._uplink = uplink
        self._window = window
        self._wakeup: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None  # set at every PUBACK and loss, for drain
        self._cursor = 0  # every row with id <= cursor is in flight, delivered or refused
        self._inflight: set[int] = set()
        self._refused: set[int] = set()  # too large: kept in the outbox, never sent
        # PUBACK came but the row could not be deleted (a full disk): delivered, so never sent
        # again by this process; the delete is retried before anything new goes out.
        self._unsaved_acks: set[int] = set()
        self._rewind = False  # something was lost: start again from the oldest row
        self._carriers: set[asyncio.Task[None]] = set()
        self._running = False
        # The fast path of a fresh press (`offer`): True while every row up to `_highest` is in
        # flight, delivered or refused, so that row `_highest + 1` may go at once, in order,
        # without reading the outbox again.
        self._caught_up = False
        self._highest = 0
        self.delivered = 0
        self.resent = 0
        self.refused_by_c8y = 0  # lines Cumulocity refused on `s/e` while this Courier ran
        self.rows_refused_by_c8y: set[int] = set()  # the outbox rows those lines came from
        self.last_ack = time.monotonic()  # of the last PUBACK, for REFUSAL_GRACE

    @property
    def running(self) -> bool:
        return self._running

    def wake(self) -> None:
        """Something changed: a new row, a PUBACK, a connection came up or went down. On the
        loop (the uplink's listeners are called there)."""
        if self._wakeup is not None:
            self._wakeup.set()
        if self._progress is not None:
            self._progress.set()

    def offer(self, row: QueuedRow) -> None:
        """A row just committed to the outbox (as the outbox will read it back): sent at once
        when nothing older waits, else left to the loop. On the loop. It saves a fresh press a
        read of the outbox on its way out (the latency of a press: README, Performance)."""
        if (self._caught_up and row.id == self._highest + 1 and not self._rewind
                and not self._unsaved_acks and len(self._inflight) < self._window):
            try:
                if self._send(row):
                    return
            except Exception as exc:  # noqa: BLE001 - the loop meets it again and handles it
                log.debug("outbox row %d left to the delivery loop: %r", row.id, exc)
        self._caught_up = False
        self.wake()

    def _send(self, row: QueuedRow) -> bool:
        """Start `row` on its way; False while its connection is not ready."""
        if row.event is None:
            sent = self._uplink.send_lines(row.other_lines, row=row.id)
        else:
            sent = self._uplink.send(row.event, row.extra_lines, other_lines=row.other_lines,
                                     row=row.id)
        if sent is None:
            return False
        self._inflight.add(row.id)
        self._cursor = max(self._cursor, row.id)
        self._highest = max(self._highest, row.id)
        carrier = asyncio.get_running_loop().create_task(self._carry(row, sent))
        self._carriers.add(carrier)
        carrier.add_done_callback(self._carried)
        return True

    async def put(self, event: Event, extra_lines: Sequence[str] = (),
                  other_lines: Sequence[DeviceLine] = ()) -> int:
        """Queue durably (on the writer thread), then wake the loop. Returns the row id."""
        row_id = await self._writer.call(self._outbox.put, event, extra_lines, other_lines)
        self.wake()
        return row_id

    async def put_lines(self, lines: Sequence[DeviceLine], time: datetime) -> int:
        """Queue lines without an event durably, then wake the loop. Returns the row id."""
        row_id = await self._writer.call(self._outbox.put_lines, lines, time)
        self.wake()
        return row_id

    async def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty but for refused rows. False when `timeout` seconds pass
        first, or at once when the uplink has given up (a refused login: see `uplink.failed`)."""
        deadline = time.monotonic() + timeout
        progress = self._progress_event()
        self.wake()
        while True:
            progress.clear()
            left = await self._writer.call(self._outbox.count)
            if left <= self.refused and self.in_flight == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._uplink.failed is not None:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, IDLE_POLL)):
                    await progress.wait()

    def _progress_event(self) -> asyncio.Event:
        if self._progress is None:
            self._progress = asyncio.Event()
        return self._progress

    @property
    def refused(self) -> int:
        """Rows that can never be sent as they are (too large): they stay queued, and waiting
        for them would only run out the clock (`outbox status` shows them)."""
        return len(self._refused)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Carry rows until cancelled. Raises on an unexpected failure."""
        self._wakeup = asyncio.Event()
        self._progress_event()
        self._uplink.add_listener(self.wake)
        self._uplink.add_refusal_listener(self._refused_by_c8y)
        self._running = True
        try:
            while True:
                self._wakeup.clear()
                try:
                    await self._pump()
                except (UplinkError, OutboxError, OSError):
                    # Expected trouble (the uplink stopping, the disk): keep carrying.
                    log.exception("delivery loop failed; retrying")
                    await asyncio.sleep(IDLE_POLL)
                    continue
                # A safety net only: every change also wakes the loop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_POLL):
                        await self._wakeup.wait()
                self._check_carriers()
        finally:
            self._running = False
            for task in list(self._carriers):
                task.cancel()
            if self._carriers:
                await asyncio.wait(self._carriers)

    def _check_carriers(self) -> None:
        """A carrier that failed unexpectedly fails the loop (and with it `run`)."""
        for task in [t for t in self._carriers if t.done()]:
            self._carriers.discard(task)
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                raise failure

    async def _pump(self) -> None:
        self._caught_up = False  # until this read has shown every row
        if self._unsaved_acks and not await self._save_acks():
            return  # the outbox cannot be written: sending more would only pile up such rows
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
        limit = room + ahead
        rows = await self._writer.call(self._outbox.peek, limit, cursor)
        if self._rewind:
            return  # a loss came while reading: start again from the oldest
        for row in rows:
            if row.id in skip or row.id in self._inflight:
                continue
            if room <= 0:
                return
            try:
                sent = self._send(row)
            except UnsendableError as exc:
                self._refused.add(row.id)
                log.error("outbox row %d cannot be sent and stays queued: %s", row.id, exc)
                await self._writer.call(self._outbox.mark_attempt, row.id, str(exc))
                continue
            except Exception:
                # Anything else: the row is not in flight, so send it again from the oldest, in
                # order, on the next turn of the loop.
                self._rewind = True
                raise
            if not sent:
                # Its connection is not ready: stop here to keep press order, and wait for the
                # uplink's state listener to wake us.
                return
            room -= 1
        if len(rows) < limit and not self._rewind:
            # The read reached the end of the outbox: every row is accounted for.
            self._highest = max([self._highest, self._cursor, *(row.id for row in rows)])
            self._caught_up = True

    def _carried(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            self._carriers.discard(task)
        else:
            self.wake()  # the loop raises it (`_check_carriers`)

    async def _carry(self, row: QueuedRow, sent: asyncio.Future[None]) -> None:
        try:
            await sent
        except ConnectionLostError:
            # The connection dropped before the PUBACK: send it again from the outbox, in order.
            # Rewind first, before anything else can run: a reconnect must not send newer rows
            # ahead of this one.
            self._rewind = True
            self._caught_up = False
            self.resent += 1
            try:
                await self._writer.call(self._outbox.mark_attempt, row.id,
                                        "connection lost before PUBACK")
            except OutboxError as exc:
                log.warning("cannot count an attempt of outbox row %d: %s", row.id, exc)
            finally:
                self._inflight.discard(row.id)
                self.wake()
            return
        await self._delivered(row.id, row.event)

    async def _delivered(self, row_id: int, event: Event | None) -> None:
        # Exactly on PUBACK (of every PUBLISH of the row): counted before the observer hears of
        # it, and before the (slower) delete of its row.
        self.last_ack = time.monotonic()
        self.delivered += 1
        if event is not None and self._observer is not None:
            try:
                self._observer(event)
            except Exception:  # an observer must never cost a delivery
                log.exception("the on_delivered observer failed")
        try:
            await self._writer.call(self._outbox.ack, row_id)
        except OutboxError as exc:
            # Delivered all the same. Keep the row out of this process's sends and retry the
            # delete from the loop; if we die first, the next start sends it again (a duplicate
            # for a PUBACK that never reached the file, docs/outbox.md).
            log.error("outbox row %d was delivered but cannot be removed yet: %s", row_id, exc)
            self._unsaved_acks.add(row_id)
        if event is None:  # a row of lines only
            log.info("outbox row %d (SmartREST lines) delivered", row_id)
        else:
            # The one line per press that says it arrived (issue 7): name, MAC, press time,
            # result.
            refused = row_id in self.rows_refused_by_c8y  # its `s/e` came before the PUBACK
            log.info("%s (%s) pressed at %s: %s", event.name, event.mac, event.c8y_time,
                     "acknowledged, but refused by Cumulocity" if refused else "delivered")
        self._inflight.discard(row_id)
        self.wake()

    def _refused_by_c8y(self, refusal: Refusal) -> None:
        # On the loop, after the uplink logged the ERROR line. The row is not kept or sent
        # again: Cumulocity would refuse the same line again.
        self.refused_by_c8y += 1
        if refusal.sent.row is not None:
            self.rows_refused_by_c8y.add(refusal.sent.row)
        task = asyncio.get_running_loop().create_task(self._count_refusal(refusal))
        self._carriers.add(task)
        task.add_done_callback(self._carried)

    async def _count_refusal(self, refusal: Refusal) -> None:
        try:
            await self._writer.call(self._outbox.record_c8y_refusal, refusal.error,
                                    refusal.sent.line)
        except OutboxError as exc:
            log.error("cannot count the refusal by Cumulocity in the outbox: %s", exc)

    async def _save_acks(self) -> bool:
        """Retry the deletes of delivered rows; True when none is left to do."""
        pending = sorted(self._unsaved_acks)
        for row_id in pending:
            try:
                await self._writer.call(self._outbox.ack, row_id)
            except OutboxError:
                return False  # the loop polls again within IDLE_POLL
            self._unsaved_acks.discard(row_id)
        log.info("the outbox is writable again: %d delivered rows removed", len(pending))
        return True


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
    from dashkanban.outbox.store import delivery_lock

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
    for event in events:
        outbox.put(event, extra_lines(event) if extra_lines is not None else ())
    if outbox.count() == 0:
        return 0  # nothing to carry: no connection (`replay` of presses all delivered before)
    return asyncio.run(_deliver_queued(settings, outbox, timeout=timeout,
                                       max_refusals=max_refusals))


async def _deliver_queued(settings: Settings, outbox: OutboxLike, *, timeout: float,
                          max_refusals: int) -> int:
    """The one-shot delivery on a loop of its own: the same uplink and Courier as `run`, but
    refused logins end it after `max_refusals` (fail fast) and the clock after `timeout`."""
    writer = Writer()
    uplink = Uplink(settings, max_refusals=max_refusals)
    courier = Courier(outbox, uplink, writer=writer)
    try:
        async with asyncio.TaskGroup() as group:
            running = [group.create_task(uplink.run(), name="uplink"),
                       group.create_task(courier.run(), name="courier")]
            try:
                drained = await courier.drain(timeout)
                if drained and courier.delivered:
                    # Errors on `s/e` follow the PUBACK: wait for them before saying "delivered".
                    await asyncio.sleep(max(0.0, courier.last_ack + REFUSAL_GRACE
                                            - time.monotonic()))
            finally:
                for task in running:
                    task.cancel()
    except BaseExceptionGroup as group_error:
        # A task failed (a bug, or unusable TLS files): its own exception, not the group.
        raise group_error.exceptions[0] from None
    finally:
        writer.close()
    if uplink.failed is not None:
        raise uplink.failed
    if not drained:
        why = f" ({uplink.last_error})" if uplink.last_error is not None else ""
        # How many stay queued and the ways out: compose.deliver_explained adds them.
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
