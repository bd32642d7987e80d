"""The Kanban loop wired into the product: the daemon, `replay` and `dashkanban kanban refilled`.

What goes where, and why it is at-least-once:

- A press of a button with a bin goes through `KanbanLoop.on_press` (and into the history). Its
  alarm line rides in the event's outbox row (`extra_lines`, the button's own device), and a
  refill button's `306` clears for the reorder buttons ride in the same row as lines for other
  child devices (`other_lines`). One row, one PUBACK: the event and its Kanban lines are
  delivered together, at least once, in press order.
- A refill from the command line or an operation from Cumulocity has no event: its lines are a
  row of lines only (`Outbox.put_lines`), queued behind everything pressed before.
- At every connect of the gateway (alarms on): the custom template collection `dashkanban-v2`
  (asked for with an empty `s/ut/dashkanban-v2`, created only when missing),
  a `101` for every button of a bin (so the children exist before anything addresses them),
  `114,c8y_KanbanRefilled` on each reorder button, and a subscription to `s/dc/dashkanban-v2`.

The history is kept whenever MACID.csv has bins (the report needs it even without alarms); the
alarm lines, the template collection and the operations only with `[kanban] alarms = yes`.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dashkanban.c8y.mqtt import BUTTON_TYPE, DeviceLine
from dashkanban.c8y.smartrest import MAX_MESSAGE_BYTES, SmartRestLine, encode_line, join_lines
from dashkanban.config import Settings
from dashkanban.detect.buttons import header_fields
from dashkanban.detect.presses import Press
from dashkanban.errors import ConfigError, DashkanbanError
from dashkanban.files import read_buttons_text
from dashkanban.kanban.alarms import (
    OPERATIONS_TOPIC,
    TEMPLATE_TOPIC,
    DevicePublish,
    supported_operations,
    template_lines,
)
from dashkanban.kanban.bins import Bins, load_bins

if TYPE_CHECKING:
    from dashkanban.c8y.mqtt import Uplink
    from dashkanban.kanban.history import History
    from dashkanban.kanban.loop import KanbanLoop

log = logging.getLogger(__name__)

FRAGMENT_PASSES = 3  # a child announced at this connect may show in the inventory a moment later
FRAGMENT_RETRY = 1.0  # seconds between passes

QueueLines = Callable[[Sequence[DeviceLine], datetime], object]


def device_lines(publishes: Iterable[DevicePublish]) -> tuple[DeviceLine, ...]:
    """Each `DevicePublish` as the outbox's `DeviceLine`s, in order."""
    return tuple(DeviceLine(p.serial, line) for p in publishes for line in p.lines)


def load_kanban_bins(settings: Settings) -> Bins:
    """The bins of MACID.csv (none when the buttons come only from the inventory)."""
    if settings.buttons.source == "inventory":
        return Bins({})
    if "bin" not in header_fields(read_buttons_text(settings.buttons.file)):
        return Bins({})  # no bin column: no need to read 10,000 buttons a second time
    _, bins = load_bins(settings.buttons.file)
    return bins


def check_mode(settings: Settings) -> None:
    """Alarms need the gateway: a refill clears the alarm on another button's child device, and
    in per-device mode every button is a connection of its own."""
    if settings.kanban.alarms and settings.gateway.mode != "gateway":
        raise ConfigError(
            "[kanban] alarms = yes needs [gateway] mode = gateway (a refill clears alarms on "
            "other buttons' devices, which per-device mode cannot address)",
            settings.path,
        )


def open_loop(settings: Settings, now: datetime | None = None) -> KanbanLoop | None:
    """The Kanban loop with its history next to the outbox, or None when there are no bins.

    The caller closes `loop.history`.
    """
    bins = load_kanban_bins(settings)
    if not len(bins):
        return None
    # Only with bins: the loop, its history and their analytics are 0.3 MB of the daemon's
    # memory that a MACID.csv without bins never needs (issue 16).
    from dashkanban.kanban.history import History, history_path
    from dashkanban.kanban.loop import KanbanLoop

    check_mode(settings)
    history = History.open(
        history_path(settings.outbox.path), settings.kanban.history_days, now or datetime.now(UTC)
    )
    return KanbanLoop(bins, settings.kanban, history)


def press_lines(loop: KanbanLoop, press: Press) -> tuple[tuple[str, ...], tuple[DeviceLine, ...]]:
    """A press's Kanban lines: (for its own device, for other devices), recorded in the history."""
    signal = loop.on_press(press)
    serial = press.button.serial
    return signal.lines_for(serial), device_lines(signal.lines_elsewhere(serial))


def queue_overdue(loop: KanbanLoop, queue: QueueLines, now: datetime) -> int:
    """The overdue check: raise `c8y_KanbanOverdue` for every reorder open longer than its lead
    time at `now`, each as a row of lines in the outbox (`queue`, e.g. `Outbox.put_lines`).
    Returns how many. The daemon calls it on a timer with the wall clock; `replay` with the
    packet clock before each press and at the end of the capture, so a replay is deterministic.
    Each alarm is recorded as raised only once `queue` took it: a full outbox raises its
    OutboxFullError here and the alarm is raised at the next check.
    """
    raised = loop.overdue(now, lambda publish: queue(device_lines((publish,)), now))
    return len(raised)


def queue_overdue_at_frames(
    loop: KanbanLoop, queue: QueueLines, times: Sequence[float], after: float, until: float
) -> int:
    """The overdue check at every frame time in `times` (sorted, epoch seconds) in
    (`after`, `until`], as `replay` runs it on the packet clock. Only the first frame past the
    next deadline can raise anything, so that is where it checks: a bisection per deadline, not
    a check per frame. Returns how many alarms were raised."""
    raised = 0
    while True:
        deadline = loop.next_deadline()
        if deadline is None:
            return raised
        index = bisect.bisect_right(times, max(after, deadline.timestamp()))
        if index >= len(times) or times[index] > until:
            return raised
        after = times[index]
        raised += queue_overdue(loop, queue, datetime.fromtimestamp(after, UTC))


def queue_pending_clears(history: History, queue: QueueLines) -> int:
    """Hand the refills still pending clear (e.g. recorded by an older `kanban refilled`, or one
    interrupted before queueing) to the outbox, and mark them sent. Returns how many."""
    done = 0
    for pending in history.pending_clears():
        lines = device_lines(pending.publishes)
        if lines:
            queue(lines, pending.time)
        # After the outbox has it: a crash in between sends the clear twice, which is harmless.
        history.mark_sent(pending.id)
        done += 1
    # Answers of operations handled but not queued (a full outbox, or a crash in between).
    for op_id, time, publishes in history.pending_answers():
        queue(device_lines(publishes), time)
        history.answer_queued(op_id)
        done += 1
    return done


def startup_publishes(bins: Bins) -> list[tuple[str, str]]:
    """What the gateway publishes after each connect, in this order: the template collection,
    a `101` per button of a bin, and `114,c8y_KanbanRefilled` on each reorder button."""
    publishes = [(TEMPLATE_TOPIC, join_lines(template_lines()))]
    children = [
        encode_line(101, button.serial, button.name, BUTTON_TYPE)
        for bin_ in bins
        for button in bin_.buttons
    ]
    # Several lines per message (SmartREST takes one line per row), within the size limit: a
    # store with 300 bins should not cost 300 messages per connect for this.
    chunk: list[str] = []
    for line in children:
        if chunk and len(join_lines([*chunk, line]).encode()) > MAX_MESSAGE_BYTES:
            publishes.append(("s/us", join_lines(chunk)))
            chunk = []
        chunk.append(line)
    if chunk:
        publishes.append(("s/us", join_lines(chunk)))
    publishes.extend((p.topic, join_lines(p.lines)) for p in supported_operations(bins))
    return publishes


class OperationRouter:
    """Refill operations to the loop, their lines to the outbox.

    Runs on the daemon's writer thread: the daemon's `on_operation` (commands/run.py) hands each
    line to it there and logs an OutboxError; it is not an `on_operation` of its own (the link
    takes a handler that raises for a bug, and ends `run`). The status and clear lines are
    queued as one row of lines (durable, in order behind earlier presses); `queue` is set once
    the Courier exists. A line that is not a refill operation is left alone.
    """

    def __init__(self, loop: KanbanLoop, gateway_serial: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.loop = loop
        self.gateway_serial = gateway_serial
        self.queue: QueueLines | None = None
        self._clock = clock

    def __call__(self, line: SmartRestLine) -> None:
        now = self._clock()
        outcome = self.loop.on_operation(line, self.gateway_serial, now)
        if outcome is None:
            return
        if self.queue is None:
            log.error("operation %s arrived before the outbox was ready: Cumulocity sends it "
                      "again after the next connect", line.template)
            return
        self.queue(device_lines(outcome.publishes), now)
        self.loop.answer_queued(outcome)  # after: a failed queue leaves the answer pending


def make_uplink(settings: Settings, loop: KanbanLoop | None, **options: Any) -> tuple[
    Uplink, OperationRouter | None
]:
    """The uplink, with the Kanban subscriptions and start-up publishes when there are bins and
    alarms are on, and the router whose `queue` the caller sets once the Courier exists. The
    caller also sets the uplink's `on_operation`, which hands each line to the router off the
    loop (commands/run.py): the router itself is not one. `options` go to `Uplink` as they are
    (the daemon's never-give-up retry policy)."""
    from dashkanban.c8y.mqtt import Uplink

    if loop is None or not settings.kanban.alarms:
        return Uplink(settings, **options), None
    router = OperationRouter(loop, settings.gateway.serial)
    uplink = Uplink(
        settings,
        extra_subscriptions=(OPERATIONS_TOPIC,),
        startup_publishes=startup_publishes(loop.bins),
        **options,
    )
    return uplink, router


async def publish_fragments(settings: Settings, bins: Bins, *,
                             rand: Callable[[], float] = random.random) -> None:
    """Write the `c8y_Kanban` fragment on each button's child device over REST, on the loop.

    Buttons not yet in the inventory are tried again a few times (their `101` went out at this
    connect), then left for the next start. When REST fails (unreachable, 5xx after the client's
    own retries, a refused login) the whole write is tried again with the uplink's backoff
    (backoff.py: from 1 s, a refusal from 30 s, both at most `[C8YMQTT] retry_max`) until it is
    done or the task is cancelled. Returns when done.
    """
    from dashkanban.backoff import uplink_backoffs
    from dashkanban.c8y.rest import AsyncCumulocityRest, RestRefusedError
    from dashkanban.c8y.token import token_source_for
    from dashkanban.kanban.cumulocity import kanban_fragment_calls

    c8y = settings.c8y
    # A certificate-only gateway writes with its device token (the running uplink's).
    tokens = token_source_for(settings) if c8y.password is None else None
    transport, refusal = uplink_backoffs(c8y.retry_max)
    failures = passes = 0
    async with AsyncCumulocityRest.from_settings(c8y, tokens=tokens) as rest:
        while True:
            try:
                done = await rest.run(kanban_fragment_calls(rest.calls, bins,
                                                            settings.gateway.serial))
            except (DashkanbanError, OSError) as exc:  # the REST client's errors
                failures += 1
                backoff = refusal if isinstance(exc, RestRefusedError) else transport
                delay = backoff.delay(failures, rand)
                # WARNING once; an outage's further retries would flood the log.
                log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                        "c8y_Kanban fragments not written yet (%s); trying again in %.0f s",
                        exc, delay)
                await asyncio.sleep(delay)
                continue
            passes += 1
            missing = [serial for serial, mo_id in done.items() if mo_id is None]
            if not missing:
                log.info("c8y_Kanban fragment written on %d button(s)", len(done))
                return
            if passes == FRAGMENT_PASSES:
                log.info("c8y_Kanban fragment written on %d button(s); %d not in Cumulocity "
                         "yet, done at the next start", len(done) - len(missing), len(missing))
                return
            await asyncio.sleep(FRAGMENT_RETRY)
