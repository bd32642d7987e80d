"""Inventory look-ups off the capture thread (`[buttons] source = inventory | both`, live).

Asking Cumulocity whether a MAC is a button takes an HTTP round trip, retries, and during an
outage up to minutes. Live capture must never wait for that: every phone's ARP would stall it while
the kernel's socket buffer overflows and drops the CSV buttons' packets. So `Lookups.ask` never
blocks: a MAC the cache cannot answer is queued for the worker thread, and its sightings are
*parked* (with their clock readings) until the answer is collected with `answers()`:

- a button: the parked sightings are debounced in order, so the press keeps the first packet's
  time and trigger, exactly as if the answer had been there at once;
- not a button (404): they are dropped;
- the look-up failed: it is never taken as "not a button". The worker retries with backoff (1 s
  doubling to 60 s; 60 s at once after a 401/403, which must not hammer the login), keeping the
  parked sightings, until it succeeds or GIVE_UP seconds after the first sighting; then one ERROR
  line names the MAC and says its press could not be attributed.

Bounded: at most `max_pending` MACs waiting (a sighting of one more MAC is not looked up, counted
in `refused`; its next sighting tries again), at most `max_parked` sightings kept per MAC (the
first ones; a burst is a handful of packets), one look-up in flight per MAC (a MAC already waiting
only parks).
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from dashkanban.backoff import Backoff
from dashkanban.buttons import Button
from dashkanban.decode import Sighting

log = logging.getLogger(__name__)

MAX_PENDING = 1024  # MACs waiting for an answer
MAX_PARKED = 32  # sightings kept per waiting MAC
GIVE_UP = 600.0  # seconds after the first sighting a failing look-up is abandoned
RETRY_FIRST = 1.0  # seconds: the longest first wait, doubled per failure (full jitter)
RETRY_MAX = 60.0


class Source(Protocol):
    """What the worker asks (c8y.rest.InventorySource): a blocking, cached look-up."""

    def __call__(self, mac: str) -> Button | None: ...  # may block; raises when it cannot tell
    def cached(self, mac: str) -> object: ...  # Button | None, or anything else for "not cached"


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING = _Pending()  # `ask`'s answer while the MAC is being looked up: the sighting is parked


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


class Lookups:
    """The asynchronous front of an inventory source. `ask` and `answers` belong to the thread
    that owns the debouncer; the worker only calls the source. `notify` is called (on the worker
    thread) whenever answers are ready to collect."""

    def __init__(
        self,
        source: Source,
        *,
        notify: Callable[[], None] | None = None,
        max_pending: int = MAX_PENDING,
        max_parked: int = MAX_PARKED,
        give_up: float = GIVE_UP,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._source = source
        self._rand = rand
        self.notify = notify
        self._max_pending = max(1, max_pending)
        self._max_parked = max(1, max_parked)
        self._give_up = give_up
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: dict[str, _Waiting] = {}
        self._due: list[tuple[float, int, str]] = []  # (when, sequence, mac): the worker's queue
        self._seq = 0
        self._done: list[str] = []  # answered MACs, not yet collected
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.refused = 0  # sightings not looked up: max_pending MACs were waiting
        self.dropped = 0  # sightings not parked: max_parked already kept for that MAC
        self.given_up = 0
        # Told when the worker fails unexpectedly (the daemon then exits 1).
        self.on_failure: Callable[[BaseException], None] | None = None

    # -- the capture side ------------------------------------------------------------------

    def ask(self, sighting: Sighting, now: float) -> Button | _Pending | None:
        """A Button, None (not a button), or PENDING (parked until `answers()`); never blocks."""
        mac = sighting.mac
        with self._cond:
            waiting = self._waiting.get(mac)
            if waiting is not None:
                if len(waiting.parked) < self._max_parked:
                    waiting.parked.append(Parked(sighting, now))
                else:
                    self.dropped += 1
                return PENDING
        known = self._source.cached(mac)
        if known is None or isinstance(known, Button):
            return known
        with self._cond:
            if len(self._waiting) >= self._max_pending:
                if self.refused == 0 or self.refused % 1000 == 0:
                    log.warning("%d MACs are waiting for the inventory look-up; %s not looked up "
                                "now (%d so far)", len(self._waiting), mac, self.refused + 1)
                self.refused += 1
                return None
            first = self._clock()
            self._waiting[mac] = _Waiting([Parked(sighting, now)], first)
            self._schedule(mac, first)
        return PENDING

    def answers(self) -> list[Answer]:
        """The answered MACs with their parked sightings, in answer order; those MACs are no
        longer pending (their next sighting reads the cache)."""
        if not self._done:  # the common case, without the lock
            return []
        with self._cond:
            done, self._done = self._done, []
            out = []
            for mac in done:
                waiting = self._waiting.pop(mac)
                out.append(Answer(mac, waiting.button, tuple(waiting.parked)))
            return out

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._waiting)

    # -- the worker ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            # Its own thread: the blocking HTTP calls must never hold up capture.
            self._thread = threading.Thread(target=self._supervised, name="inventory",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker; an HTTP call in flight finishes on its own (its answer is ignored)."""
        with self._cond:
            self._stopping = True
            waiting = sum(1 for w in self._waiting.values() if not w.answered)
            self._cond.notify_all()
        if waiting:
            log.warning("stopping with %d MAC(s) still being looked up in the inventory; their "
                        "sightings are not counted as presses", waiting)
        if self._thread is not None:
            self._thread.join(timeout)

    def _schedule(self, mac: str, when: float) -> None:
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, mac))
        self._cond.notify()

    def _next(self) -> str | None:
        with self._cond:
            while not self._stopping:
                now = self._clock()
                if self._due and self._due[0][0] <= now:
                    return heapq.heappop(self._due)[2]
                self._cond.wait(self._due[0][0] - now if self._due else None)
            return None

    def _supervised(self) -> None:
        try:
            self._work()
        except Exception as exc:  # a bug: look-ups would stop for good, silently
            if self.on_failure is None:
                raise
            self.on_failure(exc)

    def _work(self) -> None:
        from dashkanban.c8y.rest import RestRefusedError

        while (mac := self._next()) is not None:
            try:
                button = self._source(mac)  # blocking HTTP, no lock of ours held
            except Exception as exc:
                if not _expected(exc):
                    log.exception("inventory look-up of %s failed unexpectedly", mac)
                self._failed(mac, exc, refused=isinstance(exc, RestRefusedError))
                continue
            with self._cond:
                waiting = self._waiting[mac]
                waiting.button, waiting.answered = button, True
                self._done.append(mac)
                stopping = self._stopping
            if not stopping and self.notify is not None:
                self.notify()

    def _failed(self, mac: str, exc: Exception, *, refused: bool) -> None:
        with self._cond:
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
                # WARNING once per MAC; an outage's further retries would flood the log.
                log.log(logging.WARNING if waiting.failures == 1 else logging.DEBUG,
                        "cannot tell whether %s is a button yet (%s); asking again in %.0f s",
                        mac, exc, delay)
                return
            first = waiting.parked[0].sighting
            waiting.button, waiting.answered = None, True
            self._done.append(mac)
            self.given_up += 1
            stopping = self._stopping
        log.error(
            "gave up asking Cumulocity whether %s is a button after %.0f s (%s): its press at %s "
            "could not be attributed", mac, self._give_up, exc,
            datetime.fromtimestamp(first.time, UTC).isoformat(timespec="milliseconds"),
        )
        if not stopping and self.notify is not None:
            self.notify()


def _expected(exc: Exception) -> bool:
    from dashkanban.errors import DashkanbanError

    return isinstance(exc, DashkanbanError | OSError)
