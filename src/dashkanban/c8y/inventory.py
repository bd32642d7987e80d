"""Inventory look-ups beside live capture (`[buttons] source = inventory | both`, live).

Asking Cumulocity whether a MAC is a button takes an HTTP round trip, retries, and during an
outage up to minutes. Live capture must never wait for that: every phone's ARP would stall it while
the kernel's socket buffer overflows and drops the CSV buttons' packets. So `LookupQueue.ask`
never waits: a MAC the cache cannot answer is queued for `LookupQueue.run()`, and its sightings
are *parked* (with their clock readings) until the answer is collected with `answers()`:

- a button: the parked sightings are debounced in order, so the press keeps the first packet's
  time and trigger, exactly as if the answer had been there at once;
- not a button (404): they are dropped;
- the look-up failed: it is never taken as "not a button". `run` retries with backoff (1 s
  doubling to 60 s; 60 s at once after a 401/403, which must not hammer the login), keeping the
  parked sightings, until it succeeds or GIVE_UP seconds after the first sighting; then one ERROR
  line names the MAC and says its press could not be attributed.

`run()` is a task of the daemon's event loop (docs/architecture.md): the look-ups go over
httpx.AsyncClient (`RestInventoryLookup.look_up`), at most CONCURRENCY at once, and `notify` is
called on the loop's thread when answers are ready (the daemon then calls `pipeline.answered`).
It returns only when cancelled; a bug raises out of it (the daemon then exits 1).

Bounded: at most `max_pending` MACs waiting (a sighting of one more MAC is not looked up, counted
in `refused`; its next sighting tries again), at most `max_parked` sightings kept per MAC (the
first ones; a burst is a handful of packets), one look-up in flight per MAC (a MAC already waiting
only parks).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from dashkanban.backoff import Backoff
from dashkanban.detect.buttons import Button
from dashkanban.detect.decode import Sighting

log = logging.getLogger(__name__)

MAX_PENDING = 1024  # MACs waiting for an answer
MAX_PARKED = 32  # sightings kept per waiting MAC
GIVE_UP = 600.0  # seconds after the first sighting a failing look-up is abandoned
RETRY_FIRST = 1.0  # seconds: the longest first wait, doubled per failure (full jitter)
RETRY_MAX = 60.0
CONCURRENCY = 4  # look-ups in flight at once: a new store's first minutes, without a burst at
# the tenant (Cumulocity limits requests per tenant, docs/protocol.md 3.5)


class InventoryLookup(Protocol):
    """Whether a MAC is a button, asked on the event loop with a cache in front
    (c8y.rest.RestInventoryLookup is the one over Cumulocity's REST API)."""

    async def look_up(self, mac: str) -> Button | None: ...  # raises when it cannot tell
    def cached(self, mac: str) -> object: ...  # Button | None, or anything else for "not cached"
    async def aclose(self) -> None: ...  # its HTTP client, on the loop that used it


class _LookupUnderWay:
    """The type of `PENDING`, `LookupQueue.ask`'s answer for a MAC whose look-up is under way."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING = _LookupUnderWay()  # `ask`'s answer while the MAC is looked up: the sighting is parked


@dataclass(frozen=True, slots=True)
class Parked:
    sighting: Sighting
    now: float  # the pipeline clock's reading when it was seen (the debouncer's clock)


@dataclass(frozen=True, slots=True)
class Answer:
    mac: str
    button: Button | None  # None: not a button, or given up
    parked: tuple[Parked, ...]


@dataclass(slots=True)
class _Waiting:
    parked: list[Parked]
    first: float  # worker clock at the first sighting (for the give-up)
    failures: int = 0
    button: Button | None = None
    answered: bool = False
    last_error: str = field(default="")


class LookupQueue:
    """The MACs waiting for an inventory look-up, and the task that looks them up. `ask` and
    `answers` belong to the code that owns the debouncer (the pipeline, under its lock); `run()`
    does the look-ups on the event loop and calls `notify` there whenever answers are ready."""

    def __init__(
        self,
        lookup: InventoryLookup,
        *,
        notify: Callable[[], None] | None = None,
        max_pending: int = MAX_PENDING,
        max_parked: int = MAX_PARKED,
        give_up: float = GIVE_UP,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
        concurrency: int = CONCURRENCY,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._lookup = lookup
        self._rand = rand
        self.notify = notify
        self._max_pending = max(1, max_pending)
        self._max_parked = max(1, max_parked)
        self._give_up = give_up
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._concurrency = max(1, concurrency)
        self._clock = clock
        self._waiting: dict[str, _Waiting] = {}
        # New MACs from `ask`, for `run` to schedule. A deque: appends and pops are atomic, so
        # `ask` may come from another thread than the loop's (in `run` it comes from the loop).
        self._arrivals: collections.deque[tuple[str, float]] = collections.deque()  # (mac, when)
        self._done: collections.deque[str] = collections.deque()  # answered, not yet collected
        self._due: list[tuple[float, int, str]] = []  # (when, sequence, mac): run()'s queue
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.refused = 0  # sightings not looked up: max_pending MACs were waiting
        self.dropped = 0  # sightings not parked: max_parked already kept for that MAC
        self.given_up = 0

    # -- the capture side ------------------------------------------------------------------

    def ask(self, sighting: Sighting, now: float) -> Button | _LookupUnderWay | None:
        """A Button, None (not a button), or PENDING (parked until `answers()`); never blocks."""
        mac = sighting.mac
        waiting = self._waiting.get(mac)
        if waiting is not None:
            if len(waiting.parked) < self._max_parked:
                waiting.parked.append(Parked(sighting, now))
            else:
                self.dropped += 1
            return PENDING
        known = self._lookup.cached(mac)
        if known is None or isinstance(known, Button):
            return known
        if len(self._waiting) >= self._max_pending:
            if self.refused == 0 or self.refused % 1000 == 0:
                log.warning("%d MACs are waiting for the inventory look-up; %s not looked up "
                            "now (%d so far)", len(self._waiting), mac, self.refused + 1)
            self.refused += 1
            return None
        first = self._clock()
        self._waiting[mac] = _Waiting([Parked(sighting, now)], first)
        self._arrivals.append((mac, first))
        self._wake_up()
        return PENDING

    def answers(self) -> list[Answer]:
        """The answered MACs with their parked sightings, in answer order; those MACs are no
        longer pending (their next sighting reads the cache)."""
        out = []
        while self._done:
            mac = self._done.popleft()
            waiting = self._waiting.pop(mac)
            out.append(Answer(mac, waiting.button, tuple(waiting.parked)))
        return out

    @property
    def pending(self) -> int:
        return len(self._waiting)

    # -- the look-ups ----------------------------------------------------------------------

    async def run(self) -> None:
        """Look the asked MACs up, at most `concurrency` at once, until cancelled. A look-up
        that fails is retried with backoff (module doc); a bug here raises (the daemon then
        exits 1). The look-up's async client is closed on the way out. Once per LookupQueue:
        look-ups under way when it is cancelled are not resumed by another run."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        slots = asyncio.Semaphore(self._concurrency)
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    mac = await self._next()
                    await slots.acquire()
                    group.create_task(self._look_up(mac, slots))
        finally:
            self._loop = self._wake = None
            try:
                # A copy: the capture's thread may ask about a new MAC meanwhile (a dict that
                # changes size under an iteration raises, and the client would stay open).
                left = sum(1 for w in list(self._waiting.values()) if not w.answered)
                if left:
                    log.warning("stopping with %d MAC(s) still being looked up in the "
                                "inventory; their sightings are not counted as presses", left)
            finally:
                await self._lookup.aclose()

    def _wake_up(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # run() has not started: it takes the arrivals when it does
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
            return
        with contextlib.suppress(RuntimeError):  # the loop has ended: nobody to wake
            loop.call_soon_threadsafe(wake.set)

    def _schedule(self, mac: str, when: float) -> None:
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, mac))

    async def _next(self) -> str:
        """The MAC whose look-up is due first, once it is due."""
        wake = self._wake
        assert wake is not None  # set by run()
        while True:
            while self._arrivals:
                self._schedule(*self._arrivals.popleft())
            now = self._clock()
            if self._due and self._due[0][0] <= now:
                return heapq.heappop(self._due)[2]
            wake.clear()
            if self._arrivals:
                continue
            try:
                async with asyncio.timeout(self._due[0][0] - now if self._due else None):
                    await wake.wait()
            except TimeoutError:
                pass

    async def _look_up(self, mac: str, slots: asyncio.Semaphore) -> None:
        from dashkanban.c8y.rest import RestRefusedError

        try:
            try:
                button = await self._lookup.look_up(mac)
            except Exception as exc:
                if not _expected(exc):
                    # A bug: retried, it came back for 10 minutes with the daemon living on.
                    # It fails the group and `run` (the daemon logs it once and exits 1).
                    raise
                self._failed(mac, exc, refused=isinstance(exc, RestRefusedError))
                return
        finally:
            slots.release()
        waiting = self._waiting[mac]
        waiting.button, waiting.answered = button, True
        self._answered(mac)

    def _answered(self, mac: str) -> None:
        self._done.append(mac)
        if self.notify is not None:
            self.notify()

    def _failed(self, mac: str, exc: Exception, *, refused: bool) -> None:
        waiting = self._waiting[mac]
        waiting.failures += 1
        now = self._clock()
        deadline = waiting.first + self._give_up
        if now < deadline:
            # A refusal (401/403) waits the longest; anything else backs off (backoff.py).
            delay = self._retry_max if refused else Backoff(
                self._retry_first, self._retry_max).delay(waiting.failures, self._rand)
            delay = min(delay, deadline - now)  # the last try falls on the deadline
            self._schedule(mac, now + delay)
            if self._wake is not None:
                self._wake.set()  # _next may be waiting for a later MAC, or for none
            # WARNING once per MAC; an outage's further retries would flood the log.
            log.log(logging.WARNING if waiting.failures == 1 else logging.DEBUG,
                    "cannot tell whether %s is a button yet (%s); asking again in %.0f s",
                    mac, exc, delay)
            return
        first = waiting.parked[0].sighting
        waiting.button, waiting.answered = None, True
        self.given_up += 1
        log.error(
            "gave up asking Cumulocity whether %s is a button after %.0f s (%s): its press at %s "
            "could not be attributed", mac, self._give_up, exc,
            datetime.fromtimestamp(first.time, UTC).isoformat(timespec="milliseconds"),
        )
        self._answered(mac)


def _expected(exc: Exception) -> bool:
    from dashkanban.errors import DashkanbanError

    return isinstance(exc, DashkanbanError | OSError)
