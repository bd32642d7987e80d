"""`dashkanban run`: live capture -> decode -> match -> debounce -> events -> outbox -> uplink.

The same pipeline as `replay` (see detect/pipeline.py); only the frame source (a raw socket) and the
clock (monotonic time for the dead time) differ. Everything runs on one asyncio loop, supervised
by one `asyncio.TaskGroup` (docs/architecture.md): capture, the press writer, the Courier, the
uplink, inventory look-ups, the MQTT button broker, the count sync with the systemd watchdog,
metrics, the overdue timer, the SIGHUP reload, refill operations and the Kanban fragment writer
are its tasks. A task that fails unexpectedly is logged once with
its traceback and `run` exits 1, so that systemd restarts the service instead of it living on
without that part. Blocking outbox work goes to the one writer thread (outbox/writer.py).

Capture never waits for the network: a press is committed to the outbox and the Courier carries
it to Cumulocity. SIGTERM stops the capture, gives in-flight messages a moment to be acknowledged,
and exits 0; whatever is not acknowledged stays in the outbox for the next start. SIGHUP
(`systemctl reload`) re-reads MACID.csv and re-attaches the kernel filter on the open socket; the
connection and the outbox stay.

With bins in MACID.csv every press also goes through the Kanban loop (kanban/wiring.py): its alarm
and clear lines travel in the press's outbox row, and with `[kanban] alarms = yes` the uplink
publishes the template collection, subscribes `s/dc/dashkanban` and answers refill operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from dashkanban.capture import Frame
from dashkanban.config import Settings, find_config, load_settings
from dashkanban.detect.events import Event
from dashkanban.detect.pipeline import Counts, Pipeline
from dashkanban.detect.presses import Press
from dashkanban.errors import EXIT_FAILURE, EXIT_OK, DashkanbanError
from dashkanban.metrics import Metrics
from dashkanban.values import DeviceLine

if TYPE_CHECKING:
    from dashkanban.c8y.inventory import LookupQueue
    from dashkanban.c8y.link import LinkHealth
    from dashkanban.c8y.mqtt import Uplink
    from dashkanban.c8y.smartrest import SmartRestLine
    from dashkanban.capture.bpf import Program
    from dashkanban.detect.buttons import Registry
    from dashkanban.health import StateFile
    from dashkanban.kanban.bins import Bins
    from dashkanban.kanban.loop import KanbanLoop
    from dashkanban.kanban.wiring import OperationRouter
    from dashkanban.mqtt_buttons.source import ButtonBroker
    from dashkanban.outbox.courier import Courier, QueuedRow
    from dashkanban.outbox.store import Outbox
    from dashkanban.outbox.writer import Writer

log = logging.getLogger(__name__)

DRAIN_ON_STOP = 5.0  # seconds SIGTERM waits for PUBACKs of what is in flight
COUNT_SYNC = 5.0  # seconds between copies of the pipeline's counters into the metrics
OVERDUE_CHECK = 60.0  # seconds between checks for overdue bins (lead times are in days)
HELPER_JOIN = 5.0  # seconds a stop waits for a reload or an overdue check under way
# Presses waiting for the press writer (the outbox's writer thread). Presses are debounced per
# button, so even a store's worth pressed at once is a few hundred; a full queue means the writer
# is stuck (a hung disk) or a source floods. A press that does not fit is lost, counted and
# logged (docs/architecture.md "The press queue"): memory stays bounded (a press is < 1 KiB).
PRESS_QUEUE = 10_000


class FrameSource(Protocol):
    def frames(self) -> Iterator[Frame]: ...
    def stop(self) -> None: ...


ExtraLines = Callable[[Press], Sequence[str]]


class _PartFailedError(Exception):
    """A supervised task failed unexpectedly; already logged (with its traceback) by `fail`."""


class Daemon:
    """Wires the stages for `run`. Nothing touches the network or the disk before `run()`."""

    def __init__(
        self,
        settings: Settings,
        source: FrameSource,
        *,
        extra_lines: ExtraLines | None = None,
        drain_on_stop: float = DRAIN_ON_STOP,
        on_delivered: Callable[[Event], None] | None = None,
        overdue_every: float = OVERDUE_CHECK,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        signals: bool = False,
        press_queue: int = PRESS_QUEUE,
        registry: Registry | None = None,
    ) -> None:
        """`on_delivered` observes each event on its PUBACK (see `Courier`); None costs nothing.
        `clock` is the wall clock of the overdue check, every `overdue_every` seconds.
        `signals`: SIGTERM/SIGINT stop and SIGHUP reloads, handled on the loop (the main thread
        only; `dashkanban run` sets it). `press_queue`: how many presses may wait for the
        press writer (PRESS_QUEUE). `registry`: MACID.csv as `run_command` already read it for
        the kernel filter (read in `run()` otherwise): read once, 10,000 buttons' worth of
        memory less at the peak (issue 16)."""
        self.settings = settings
        self.overdue_every = overdue_every
        self._clock = clock
        self.source = source
        self.extra_lines = extra_lines
        self.on_delivered = on_delivered
        self.drain_on_stop = drain_on_stop
        self.signals = signals
        self.metrics = Metrics()
        self._registry = registry  # handed on in run(), not kept: a reload replaces it
        # stop() and reload() may come from another thread or a signal handler before the loop
        # exists: plain flags, handed to the loop once it runs.
        self._stop_asked = False
        self._reload_asked = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._reloading: asyncio.Event | None = None
        # The first unexpected failure of a long-lived part: run() then ends with exit 1, so
        # that systemd restarts the service instead of it living on without that part.
        self._failure: str | None = None
        self._synced = Counts(0, 0, 0, 0, 0)
        self._backlog_watch: tuple[int, str] | None = None  # (delivered count, line to log)
        self._group: asyncio.TaskGroup | None = None
        # The running parts, for health checks and tests: None until `run()` has built them.
        self.pipeline: Pipeline | None = None
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.courier: Courier | None = None
        self.button_broker: ButtonBroker | None = None  # with [mqtt_buttons] (issue 19)
        self._press_queue: asyncio.Queue[Press] | None = None  # see _write_presses
        self._press_queue_size = press_queue
        self._presses_lost = 0  # since the press queue last had room (one ERROR per stretch)
        # Since start: self.metrics.presses_lost(), the one count. The total last put in the
        # state file (`outbox status`):
        self._lost_shown = 0
        self._state_changed: Callable[[], None] | None = None  # the state listener, in `_serve`

    def stop(self) -> None:
        """Drain and stop: safe from a signal handler or another thread."""
        self._stop_asked = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to stop
                loop.call_soon_threadsafe(self._set_stopping)
        self.source.stop()

    def _set_stopping(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def reload(self) -> None:
        """Re-read MACID.csv soon (SIGHUP, `systemctl reload`): safe from a signal handler or
        another thread; the reload task reads the file and re-attaches the filter."""
        self._reload_asked = True  # seen by the loop when it starts, if it has not yet
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._set_reloading)

    def _set_reloading(self) -> None:
        self._reload_asked = False
        if self._reloading is not None:
            self._reloading.set()

    def fail(self, part: str, exc: BaseException) -> None:
        """A long-lived part failed unexpectedly: log it once with its traceback, and stop;
        `run()` then returns 1."""
        first = self._failure is None
        if first:
            self._failure = part
            log.critical("%s failed unexpectedly; exiting so that the service is restarted",
                         part, exc_info=(type(exc), exc, exc.__traceback__))

    @property
    def failure(self) -> str | None:
        """The part whose unexpected failure ended `run()`, if any."""
        return self._failure

    def run(self) -> int:
        from dashkanban.c8y.inventory import LookupQueue
        from dashkanban.compose import build_pipeline, inventory_lookup, load_registry
        from dashkanban.kanban import wiring
        from dashkanban.outbox.store import Outbox, delivery_lock

        settings = self.settings
        registry, self._registry = load_registry(settings, self._registry), None
        source = inventory_lookup(settings)
        # Inventory look-ups are a task of the loop; capture only parks the sightings of a MAC
        # being looked up, and the answers' presses come back through `_answered`. With the
        # look-ups' cache, a MAC known not to be a button is dropped before it is decoded.
        lookups = LookupQueue(source) if source is not None else None
        pipeline = build_pipeline(settings, registry, inventory=lookups,
                                  cached=source.cached if source is not None else None)
        with contextlib.ExitStack() as resources:  # closed in reverse order, also on errors
            if source is not None:
                resources.callback(source.close)
            outbox = resources.enter_context(Outbox.from_settings(settings.outbox,
                                                                  metrics=self.metrics))
            # The daemon is the one that carries this outbox to Cumulocity (see delivery_lock).
            resources.enter_context(delivery_lock(settings.outbox.path, wait=True))
            kanban = wiring.open_loop(settings)  # after the outbox: it makes the state folder
            if kanban is not None and kanban.history is not None:
                resources.callback(kanban.history.close)
            asyncio.run(self._serve(settings, registry, pipeline, lookups, outbox, kanban))
        if self._failure is not None:
            log.error("dashkanban stopped: %s failed", self._failure)
            return EXIT_FAILURE
        log.info("dashkanban stopped")
        return EXIT_OK

    # -- the loop ------------------------------------------------------------------------------

    async def _serve(self, settings: Settings, registry: Registry, pipeline: Pipeline,
                     lookups: LookupQueue | None, outbox: Outbox,
                     kanban: KanbanLoop | None) -> None:
        """Every long-lived part as a task of one group, until stopped or one of them fails."""
        from dashkanban.c8y.mqtt import service_options
        from dashkanban.health import StateFile, notify
        from dashkanban.kanban import wiring
        from dashkanban.metrics import MetricsReporting
        from dashkanban.outbox.courier import Courier
        from dashkanban.outbox.store import plural
        from dashkanban.outbox.writer import Writer

        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        self._reloading = asyncio.Event()
        if self._stop_asked:
            self._stopping.set()
        if self._reload_asked:
            self._reloading.set()
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        before = {sig: signal.getsignal(sig) for sig in handled} if self.signals else {}
        writer = Writer()
        # The uplink's state file has a thread of its own (health.py): a slow fsync of it never
        # holds up the loop, nor a press's commit on the outbox's writer thread.
        state_writer = Writer("uplink-state")
        state = StateFile(settings.outbox.path)
        health: Callable[[], list[LinkHealth]] | None = None  # the uplink's, once built
        reporting: MetricsReporting | None = None
        # Everything opened from here on is closed in the `finally` below, whichever step
        # fails (a taken metrics port, an unusable ca_file: a ConfigError, exit 2).
        try:
            if self.signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self._on_stop_signal, sig)
                loop.add_signal_handler(signal.SIGHUP, self._reloading.set)
            # `run` never gives up on Cumulocity: refusals and outages are retried for ever, at
            # most every [C8YMQTT] retry_max seconds (issue 11).
            uplink, router = wiring.make_uplink(settings, kanban, **service_options(settings))
            health = uplink.health
            courier = Courier(outbox, uplink, writer=writer, on_delivered=self._delivered)
            uplink.add_listener(self._count_reconnects(uplink, outbox, courier, writer))
            self._state_changed = self._state_listener(uplink, state, state_writer)
            uplink.add_listener(self._state_changed)
            if router is not None:
                # A refill operation is handled on the writer thread: its history entry, its
                # answer's outbox row, then "answer queued" (kanban/wiring.py), in that order.
                router.queue = outbox.put_lines

                def on_operation(line: SmartRestLine) -> None:
                    self._spawn("the operation handler",
                                self._operation(router, line, writer, courier))

                uplink.on_operation = on_operation
            if kanban is not None and kanban.history is not None:
                queued = await writer.call(wiring.queue_pending_clears, kanban.history,
                                           outbox.put_lines)
                if queued:
                    log.info("%d refill(s) from the command line queued for Cumulocity", queued)
            # The row count off the loop: a SQLite read on the writer thread, after the writes.
            reporting = MetricsReporting(settings.metrics, self.metrics,
                                         lambda: writer.call(outbox.count),
                                         uplink=lambda: _uplink_reading(uplink))
            await reporting.open()  # a taken port is a ConfigError (exit 2) before the group
            broker = self._button_broker(settings, registry, pipeline, courier)  # ConfigError
            presses: asyncio.Queue[Press] = asyncio.Queue(self._press_queue_size)
            self._press_queue = presses
            queued_at_start = await writer.call(outbox.count)
            log.info(
                "dashkanban running: %s from %s, %s mode as %s to %s:%d, %s queued",
                plural(len(registry), "button"), settings.buttons.source, settings.gateway.mode,
                settings.gateway.serial, settings.c8y.tenant, settings.c8y.port,
                plural(queued_at_start, "event"),
            )
            state.snapshot(uplink.health(), presses_lost=self.metrics.presses_lost())
            await state_writer.call(state.flush)
            self.pipeline, self.outbox, self.uplink, self.courier = (pipeline, outbox, uplink,
                                                                     courier)
            async with asyncio.TaskGroup() as group:
                self._group = group
                tasks = {
                    "uplink": self._spawn("the uplink", uplink.run()),
                    "courier": self._spawn("the delivery loop", courier.run()),
                    "metrics": self._spawn("the metrics", reporting.run()),
                    # Presses of the capture and of the button broker, committed in order.
                    "presses": self._spawn("the press writer", self._write_presses(
                        presses, pipeline, outbox, courier, kanban, writer)),
                }
                helpers = [
                    self._spawn("the count sync", self._sync_loop(pipeline)),
                    self._spawn("the button reload", self._reload_loop(settings, pipeline,
                                                                       kanban)),
                ]
                if kanban is not None and settings.kanban.alarms:
                    helpers.append(self._spawn("the overdue check",
                                               self._overdue_loop(kanban, outbox, courier,
                                                                  writer)))
                if kanban is not None and kanban.history is not None:
                    uplink.add_listener(self._fragments_once(uplink, kanban.bins, helpers))
                if lookups is not None:
                    lookups.notify = lambda: self._answered(pipeline)
                    helpers.append(self._spawn("the inventory look-ups", lookups.run()))
                if broker is not None:
                    helpers.append(self._spawn("the button broker", broker.run()))
                capture = self._spawn("the capture", self._capture(
                    pipeline, outbox, courier, kanban, writer))
                # The outbox is open and the capture about to read: systemd may call us started.
                notify("READY=1")
                await self._stopping.wait()
                notify("STOPPING=1")
                await _cancel([capture, *helpers])
                await presses.join()  # every press seen before the stop is in the outbox
                self._report_lost()
                self._sync(pipeline)
                if not await courier.drain(self.drain_on_stop):
                    left = await writer.call(outbox.count)
                    log.warning("stopping with %s queued; %s sent at the next start",
                                plural(left, "event"), "it is" if left == 1 else "they are")
                await _cancel(list(tasks.values()))
        except BaseExceptionGroup as group_error:
            known = [e for e in group_error.exceptions if isinstance(e, DashkanbanError)]
            if known:
                raise known[0] from None  # its own message and exit code (e.g. no permission)
            if not all(isinstance(e, _PartFailedError) for e in group_error.exceptions):
                raise
        finally:
            self._group = None
            for sig, handler in before.items():
                loop.remove_signal_handler(sig)  # False when the set-up failed before it
                signal.signal(sig, handler)  # those of before the loop, for the way out
            if reporting is not None:
                reporting.close()  # its port, also when the group never ran
            self._sync(pipeline)
            writer.close()  # after every task: the last acks are written
            state_writer.close()  # the last state written on it, then the final one here
            if health is not None:
                state.write(health(), running=False, presses_lost=self.metrics.presses_lost())

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        log.info("%s: stopping", sig.name)
        self.stop()

    def _spawn(self, part: str, work: Coroutine[Any, Any, Any]) -> asyncio.Task[None]:
        """`work` as a task of the group: an exception from it is logged once (`fail`) and ends
        `run()` with exit 1; a known DashkanbanError keeps its own message and exit code."""
        group = self._group
        if group is None:
            work.close()
            raise RuntimeError("the daemon is not running")

        async def supervised() -> None:
            try:
                await work
            except (asyncio.CancelledError, DashkanbanError):
                raise
            except Exception as exc:  # noqa: BLE001 - logged by fail(): a bug ends run, exit 1
                self.fail(part, exc)
                raise _PartFailedError(part) from None

        task = supervised()
        try:
            return group.create_task(task, name=part)
        except RuntimeError:  # the group is shutting down: nothing may start any more
            task.close()
            work.close()
            raise

    # -- the press path --------------------------------------------------------------------------

    async def _capture(self, pipeline: Pipeline, outbox: Outbox, courier: Courier,
                       kanban: KanbanLoop | None, writer: Writer) -> None:
        """Frames from the source through the pipeline, on the loop.

        A live source (`LiveCapture`, `NoCapture`) has `run(handle)`: it reads its socket with
        `loop.add_reader` and calls `handle` per frame on the loop; the presses go to the press
        writer (`_write_presses`), so capture reads on while a press is being committed.

        A blocking source (frames from stdin, a test's queue) has only `frames()`: it is read on
        a thread (its read blocks) and each press is committed before the next frame is asked
        for, which the fault tests count on. The source's end stops the daemon as SIGTERM does."""
        live = getattr(self.source, "run", None)
        if live is not None:
            await live(pipeline.press_handler(self._enqueue, time.monotonic))
            return  # run() returns only when cancelled
        loop = asyncio.get_running_loop()

        async def on_frame(frame: Frame) -> None:
            presses = list(pipeline.run_presses((frame,), clock=time.monotonic))
            for press in presses:
                await self._press(press, pipeline, outbox, courier, kanban, writer)

        def read() -> None:
            # A thread of its own: a blocking frame source's read (see above).
            for frame in self.source.frames():
                asyncio.run_coroutine_threadsafe(on_frame(frame), loop).result()

        reading = asyncio.ensure_future(asyncio.to_thread(read))
        try:
            await asyncio.shield(reading)
        except asyncio.CancelledError:
            self.source.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait({reading}, timeout=HELPER_JOIN)
            raise
        self.stop()  # the source ended (end of stdin, a file): drain and exit

    def _enqueue(self, press: Press) -> None:
        """On the loop: a press of the live capture, an inventory answer or the button broker,
        for the press writer. A full queue loses the press (PRESS_QUEUE): counted in the
        metrics, one ERROR when it fills and one with the count when it has room again."""
        assert self._press_queue is not None
        try:
            self._press_queue.put_nowait(press)
        except asyncio.QueueFull:
            self._presses_lost += 1
            self.metrics.press_lost()
            if self._presses_lost == 1:
                log.error("the press queue is full (%d presses wait for the outbox writer: is "
                          "the disk hung?); presses are lost until it has room",
                          self._press_queue.maxsize)
            # `outbox status` shows the count while the stretch lasts: at each power of two here
            # (a few writes however long it lasts), and exactly at each count sync (`_sync`).
            if self._presses_lost & (self._presses_lost - 1) == 0:
                self._show_lost()
            return
        self._report_lost()

    def _show_lost(self) -> None:
        """The lost presses into the state file (a snapshot; written off the loop)."""
        self._lost_shown = self.metrics.presses_lost()
        if self._state_changed is not None:
            self._state_changed()

    def _report_lost(self) -> None:
        """The end of a stretch of lost presses (the queue had room again, or the stop)."""
        from dashkanban.outbox.store import plural

        if self._presses_lost:
            log.error("the press queue has room again; %s lost while it was full",
                      plural(self._presses_lost, "press"))
            self._presses_lost = 0
            self._show_lost()

    async def _write_presses(self, presses: asyncio.Queue[Press], pipeline: Pipeline,
                             outbox: Outbox, courier: Courier, kanban: KanbanLoop | None,
                             writer: Writer) -> None:
        """Commits the queued presses to the outbox one by one, in the order they came (the
        one writer thread), and hands each to the Courier. A stop waits for the queue to empty
        (`presses.join()`) before the drain, so no press seen is left behind in memory."""
        while True:
            press = await presses.get()
            try:
                await self._press(press, pipeline, outbox, courier, kanban, writer)
            finally:
                presses.task_done()

    async def _press(self, press: Press, pipeline: Pipeline, outbox: Outbox, courier: Courier,
                     kanban: KanbanLoop | None, writer: Writer) -> None:
        event = pipeline.event_for(press)
        queued = await writer.call(self._queue_press, press, event, outbox, kanban)
        if queued is not None:
            courier.offer(queued)
        uplink = self.uplink
        if queued is not None and uplink is not None and not uplink.connected:
            why = f": {uplink.last_error}" if uplink.last_error is not None else ""
            log.info("%s (%s) pressed at %s: queued, Cumulocity not connected%s",
                     event.name, event.mac, event.c8y_time, why)
        self._sync(pipeline)

    def _queue_press(self, press: Press, event: Event, outbox: Outbox,
                     kanban: KanbanLoop | None) -> QueuedRow | None:
        """On the writer thread: the press's Kanban lines (its history), its outbox row, its
        identity; in press order, since the writer runs one call at a time. Returns the row as
        the outbox will read it back (for `Courier.offer`), None when it could not be queued."""
        from dashkanban.kanban import wiring
        from dashkanban.outbox.store import OutboxError, press_key

        extra = tuple(self.extra_lines(press)) if self.extra_lines is not None else ()
        others: tuple[DeviceLine, ...] = ()
        if kanban is not None:
            own, others = wiring.press_lines(kanban, press)
            extra = own + extra
        # With its identity in the same transaction, as `replay` keeps it (docs/outbox.md): a
        # capture of the same presses replayed later skips them instead of sending them twice.
        try:
            return outbox.put_row(event, extra, others, key=press_key(event))
        except OutboxError as exc:
            log.error("%s pressed at %s but could not be queued: %s",
                      event.name, event.c8y_time, exc)
            return None

    def _answered(self, pipeline: Pipeline) -> None:
        """On the loop (`LookupQueue.notify`): the presses of the MACs the inventory just answered,
        to the press writer in order."""
        if self._stopping is not None and self._stopping.is_set():
            return
        try:
            pipeline.answered(self._enqueue)
        except Exception:  # one failing press must not end the look-ups (logged, like capture)
            log.exception("a press from the inventory look-up could not be handled")

    async def _operation(self, router: OperationRouter, line: SmartRestLine, writer: Writer,
                         courier: Courier) -> None:
        from dashkanban.outbox.store import OutboxError

        try:
            await writer.call(router, line)
        except OutboxError as exc:  # its answer stays pending: queued at redelivery or start
            log.error("operation %s could not be answered now (%s); it is answered when "
                      "Cumulocity sends it again or at the next start", line.template, exc)
            return
        courier.wake()

    def _button_broker(self, settings: Settings, registry: Registry, pipeline: Pipeline,
                       courier: Courier) -> ButtonBroker | None:
        """The MQTT buttons' source (issue 19), a task of the group; None without
        `[mqtt_buttons]`. Its presses go to the press writer like the capture's; battery levels
        go through the outbox (`Courier.put_lines`)."""
        from dashkanban.mqtt_buttons.wiring import make_broker

        self.button_broker = make_broker(settings, registry, pipeline, self._enqueue,
                                         courier.put_lines, metrics=self.metrics)
        return self.button_broker

    # -- the other tasks -------------------------------------------------------------------------

    async def _overdue_loop(self, kanban: KanbanLoop, outbox: Outbox, courier: Courier,
                            writer: Writer) -> None:
        """Every `overdue_every` seconds (and at start: a reorder may have become overdue while
        the daemon was down), raise `c8y_KanbanOverdue` for each reorder open longer than its
        lead time (issue 18); the lines go through the outbox like every alarm."""
        from dashkanban.kanban.wiring import queue_overdue
        from dashkanban.outbox.store import OutboxError

        while True:
            try:
                if await writer.call(queue_overdue, kanban, outbox.put_lines, self._clock()):
                    courier.wake()
            except OutboxError as exc:  # full or failing: the capture logs its own; go on
                # Recorded only once queued (kanban/loop.py): the next check raises it again.
                log.error("an overdue alarm could not be queued (%s); it is raised at the next "
                          "check", exc)
            await asyncio.sleep(self.overdue_every)

    async def _reload_loop(self, settings: Settings, pipeline: Pipeline,
                           kanban: KanbanLoop | None) -> None:
        """After a SIGHUP, re-read MACID.csv (on a thread: a file read and a setsockopt)."""
        assert self._reloading is not None
        while True:
            await self._reloading.wait()
            self._reloading.clear()  # before reading: a SIGHUP from now on reads again
            await asyncio.to_thread(self._reload_buttons, settings, pipeline, kanban)

    def _reload_buttons(self, settings: Settings, pipeline: Pipeline,
                        kanban: KanbanLoop | None) -> None:
        """MACID.csv again: the matching and the kernel filter on the open socket (issue 16);
        the uplink and the outbox stay as they are. A bad file keeps the old list (one ERROR)."""
        from dashkanban.capture.filters import reload_buttons
        from dashkanban.kanban.bins import Bins
        from dashkanban.kanban.wiring import load_kanban_bins

        if settings.buttons.source == "inventory":
            log.info("SIGHUP: [buttons] source = inventory: no MACID.csv to re-read")
            return
        log.info("SIGHUP: reloading %s", settings.buttons.file)
        registry = reload_buttons(settings, _SourceFilter(self.source), pipeline.use_registry)
        if registry is None:
            return
        if self.button_broker is not None:  # the MQTT buttons' topics too (issue 19)
            self.button_broker.use_registry(registry)
        try:
            bins = load_kanban_bins(settings)
        except DashkanbanError as exc:  # the buttons are fine, their Kanban columns are not
            log.warning("reload: %s; the Kanban bins stay as loaded at start", exc)
            return
        if bins != (kanban.bins if kanban is not None else Bins({})):
            log.warning("reload: the Kanban bins of %s changed; they take effect at the next "
                        "restart (systemctl restart dashkanban)", settings.buttons.file)

    def _fragments_once(self, uplink: Uplink, bins: Bins,
                        helpers: list[asyncio.Task[None]]) -> Callable[[], None]:
        """On the first connect: the c8y_Kanban fragments over REST, as a task (REST may be slow
        or unreachable; capture and delivery never wait for it)."""
        from dashkanban.kanban.wiring import publish_fragments

        started = False

        def listener() -> None:
            nonlocal started
            stopping = self._stopping is not None and self._stopping.is_set()
            if started or stopping or not uplink.connected or self._group is None:
                return
            started = True
            helpers.append(self._spawn("the Kanban fragment writer",
                                       publish_fragments(self.settings, bins)))

        return listener

    def _state_listener(self, uplink: Uplink, state: StateFile,
                        state_writer: Writer) -> Callable[[], None]:
        """At each connection change: the state as of now, written on the state file's own
        thread (its fsyncs never hold up the loop). That thread writes one at a time and always
        the newest state (`StateFile.flush`), so an earlier state never overwrites a later one."""

        def listener() -> None:
            state.snapshot(uplink.health(), presses_lost=self.metrics.presses_lost())
            if self._group is None:
                return  # before the group or after it: `_serve` writes the state itself
            with contextlib.suppress(RuntimeError):  # the group is ending: the last state follows
                self._spawn("the uplink state file", state_writer.call(state.flush))

        return listener

    def _count_reconnects(self, uplink: Uplink, outbox: Outbox, courier: Courier,
                          writer: Writer) -> Callable[[], None]:
        """Counts reconnects, and says once when an outage ended: how long it lasted and, when
        the backlog it left is out, how many queued events that was."""
        was = {"connected": False, "ever": False}
        seen: list[tuple[float, int] | None] = [None]

        def listener() -> None:
            now = uplink.connected
            if now and not was["connected"] and was["ever"]:
                self.metrics.add("reconnects")
            if now:
                was["ever"] = True
            was["connected"] = now
            outage = uplink.last_outage
            if now and outage is not None and outage is not seen[0] and self._group is not None:
                seen[0] = outage
                with contextlib.suppress(RuntimeError):  # the group is ending: no line then
                    self._spawn("the end-of-outage count",
                                self._backlog_after(outage[0], outbox, courier, writer))

        return listener

    async def _backlog_after(self, outage: float, outbox: Outbox, courier: Courier,
                             writer: Writer) -> None:
        from dashkanban.health import duration

        # The count on the writer thread, not on the loop (it waits for the outbox's lock, held
        # through a put's fsync). `delivered` is read in the same step as the count is queued:
        # a PUBACK counts itself and queues its row's delete in one step too, so the two agree.
        delivered = courier.delivered
        backlog = await writer.call(outbox.count)
        target = delivered + backlog
        text = f"connected again after {duration(outage)}; {{}} queued events delivered"
        if backlog == 0:
            log.warning(text.format(0))
            return
        self._backlog_watch = (target, text.format(backlog))

    def _delivered(self, event: Event) -> None:
        if self.on_delivered is not None:
            self.on_delivered(event)
        self._check_backlog()

    async def _sync_loop(self, pipeline: Pipeline) -> None:
        """The counters into the metrics, and systemd's watchdog: `WATCHDOG=1` comes from the
        loop itself, so a loop that hangs is restarted (and a failed task ends the process)."""
        from dashkanban.health import notify, watchdog_interval

        watchdog = watchdog_interval()
        tick = COUNT_SYNC if watchdog is None else min(COUNT_SYNC, watchdog)
        while True:
            await asyncio.sleep(tick)
            self._sync(pipeline)
            self._check_backlog()
            if watchdog is not None and self._failure is None:
                notify("WATCHDOG=1")

    def _check_backlog(self) -> None:
        """Log the end-of-outage line once the backlog is out."""
        watch = self._backlog_watch
        if watch is None or self.courier is None:
            return
        if self.courier.delivered >= watch[0]:
            self._backlog_watch = None
            log.warning("%s", watch[1])

    def _sync(self, pipeline: Pipeline) -> None:
        # The pipeline keeps plain counters on the hot path; the metrics get their increments.
        now = pipeline.counts()
        before, self._synced = self._synced, now
        if self.metrics.presses_lost() != self._lost_shown:
            self._show_lost()
        for name, value, old in (
            ("frames", now.packets, before.packets),
            ("candidates", now.candidates, before.candidates),
            ("malformed", now.malformed, before.malformed),
            ("presses", now.presses, before.presses),
        ):
            if value > old:
                self.metrics.add(name, value - old)  # type: ignore[arg-type]
        # The kernel's drops and the frames cut short, from a live capture (capture/live.py).
        statistics = getattr(self.source, "statistics", None)
        if statistics is not None:
            counts = statistics()
            self.metrics.capture_totals(counts.drops, counts.truncated)


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait until they are done (their own clean-up included)."""
    for task in tasks:
        task.cancel()
    pending = [t for t in tasks if not t.done()]
    if pending:
        await asyncio.wait(pending)


class _SourceFilter:
    """The frame source's `set_filter` (LiveCapture's) for a reload; a source without a kernel
    filter (frames from stdin, a test's) has the matching changed only."""

    def __init__(self, source: object) -> None:
        self._source = source
        self._set_filter = getattr(source, "set_filter", None)

    def set_filter(self, programs: Program | Sequence[Program]) -> Program | None:
        if self._set_filter is None:
            return None
        attached: Program | None = self._set_filter(programs)
        return attached

    def reopen(self) -> None:
        """After a set_filter the open socket refused (only LiveCapture's can refuse one)."""
        reopen = getattr(self._source, "reopen", None)
        if reopen is not None:
            reopen()


def _uplink_reading(uplink: Uplink) -> tuple[bool, int]:
    return uplink.connected, sum(link.refusals for link in uplink.health())


@dataclass(frozen=True, slots=True)
class RunOptions:
    """`dashkanban run`'s arguments (cli.py builds them)."""

    config: Path | None
    interface: str | None
    allow_root: bool


def run_command(args: RunOptions) -> int:
    from dashkanban.capture.live import LiveCapture
    from dashkanban.compose import load_buttons
    from dashkanban.mqtt_buttons.wiring import frame_source
    from dashkanban.privileges import refuse_root

    refuse_root(args.allow_root)
    settings = load_settings(find_config(args.config))
    # MACID.csv read once, for the kernel filter and the matching (issue 16: the daemon's peak).
    registry = load_buttons(settings.buttons.file) if settings.buttons.source == "csv" else None
    # The raw socket with its kernel filter (`source = csv`: the button list), its permission
    # checked before connecting anywhere (exit 2 with the fix); none with MQTT buttons only.
    capture = frame_source(settings, args.interface, registry)
    # The loop takes the signals over once it runs (`signals=True`); these handlers cover the
    # start before it (opening the outbox) and the end after it.
    daemon = Daemon(settings, capture, signals=True, registry=registry)
    del registry  # the daemon hands it on; a reload (SIGHUP) must be able to free it
    _on_signals(daemon.stop, (signal.SIGTERM, signal.SIGINT))
    # SIGHUP (`systemctl reload dashkanban`): re-read MACID.csv without a restart (issue 16).
    signal.signal(signal.SIGHUP, lambda _signum, _frame: daemon.reload())
    if isinstance(capture, LiveCapture):
        log.info("capturing on %s (%s)", capture.interface,
                 ", ".join(sorted(settings.capture.detect)))
    return daemon.run()


def _on_signals(stop: Callable[[], None], signals: Iterable[signal.Signals]) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop()

    for sig in signals:
        signal.signal(sig, handler)
