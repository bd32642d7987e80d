"""`dashkanban run`: live capture -> decode -> match -> debounce -> events -> outbox -> uplink.

The same pipeline as `replay` (see pipeline.py); only the frame source (a raw socket) and the
clock (monotonic time for the dead time) differ. Capture never waits for the network: a press is
committed to the outbox and the Courier carries it to Cumulocity on its own thread. SIGTERM stops
the capture, gives in-flight messages a moment to be acknowledged, and exits 0; whatever is not
acknowledged stays in the outbox for the next start. SIGHUP (`systemctl reload`) re-reads MACID.csv
and re-attaches the kernel filter on the open socket; the connection and the outbox stay.

With bins in MACID.csv every press also goes through the Kanban loop (kanban/wiring.py): its alarm
and clear lines travel in the press's outbox row, and with `[kanban] alarms = yes` the uplink
publishes the template collection, subscribes `s/dc/dashkanban` and answers refill operations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from dashkanban.capture import Frame
from dashkanban.config import Settings, find_config, load_settings
from dashkanban.errors import EXIT_FAILURE, EXIT_OK, DashkanbanError
from dashkanban.events import Event
from dashkanban.metrics import Metrics
from dashkanban.pipeline import Counts, Pipeline
from dashkanban.presses import Press

if TYPE_CHECKING:
    from dashkanban.buttons import Registry
    from dashkanban.c8y.mqtt import Uplink
    from dashkanban.capture.bpf import Program
    from dashkanban.delivery import Courier
    from dashkanban.inventory import Lookups
    from dashkanban.kanban.bins import Bins
    from dashkanban.kanban.loop import KanbanLoop
    from dashkanban.mqtt_buttons.source import ButtonBroker
    from dashkanban.outbox import Outbox

log = logging.getLogger(__name__)

DRAIN_ON_STOP = 5.0  # seconds SIGTERM waits for PUBACKs of what is in flight
COUNT_SYNC = 5.0  # seconds between copies of the pipeline's counters into the metrics
OVERDUE_CHECK = 60.0  # seconds between checks for overdue bins (lead times are in days)
RELOAD_POLL = 0.5  # seconds; how late the reload thread sees a SIGHUP
HELPER_JOIN = 5.0  # seconds a stop waits for a reload or an overdue check under way


class FrameSource(Protocol):
    def frames(self) -> Iterator[Frame]: ...
    def stop(self) -> None: ...


ExtraLines = Callable[[Press], Sequence[str]]


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
    ) -> None:
        """`on_delivered` observes each event on its PUBACK (see `Courier`); None costs nothing.
        `clock` is the wall clock of the overdue check, every `overdue_every` seconds."""
        self.settings = settings
        self.overdue_every = overdue_every
        self._clock = clock
        self.source = source
        self.extra_lines = extra_lines
        self.on_delivered = on_delivered
        self.drain_on_stop = drain_on_stop
        self.metrics = Metrics()
        self._stopping = threading.Event()
        # SIGHUP: a plain flag set by the signal handler (no lock there: a handler that took
        # one could interrupt its own thread holding it), seen by the reload thread's poll.
        self._reload_asked = False
        # The first unexpected failure of a long-lived part: run() then ends with exit 1, so
        # that systemd restarts the service instead of it living on without that part.
        self._failure: str | None = None
        self._failure_lock = threading.Lock()
        self._synced = Counts(0, 0, 0, 0, 0)
        self._sync_lock = threading.Lock()  # capture, inventory and ticker threads all sync
        # The running parts, for health checks and tests: None until `run()` has built them.
        self._backlog_watch: tuple[int, str] | None = None  # (delivered count, line to log)
        self.pipeline: Pipeline | None = None
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.courier: Courier | None = None
        self.button_broker: ButtonBroker | None = None  # with [mqtt_buttons] (issue 19)

    def stop(self) -> None:
        """Safe from a signal handler or another thread."""
        self._stopping.set()
        self.source.stop()

    def reload(self) -> None:
        """Re-read MACID.csv soon (SIGHUP, `systemctl reload`): only sets a flag, so it is safe
        from a signal handler; the reload thread reads the file and re-attaches the filter."""
        self._reload_asked = True

    def fail(self, part: str, exc: BaseException) -> None:
        """A long-lived part failed unexpectedly: log it once with its traceback, and stop;
        `run()` then returns 1. Safe from any thread (not from a signal handler)."""
        with self._failure_lock:
            first = self._failure is None
            if first:
                self._failure = part
        if first:
            log.critical("%s failed unexpectedly; exiting so that the service is restarted",
                         part, exc_info=(type(exc), exc, exc.__traceback__))
        self.stop()

    def _supervised(self, part: str, target: Callable[..., None]) -> Callable[..., None]:
        """`target` for a thread of the daemon: an exception from it ends `run()` with exit 1
        instead of a thread that is silently gone."""

        def run(*args: object) -> None:
            try:
                target(*args)
            except Exception as exc:  # noqa: BLE001 - logged by fail()
                self.fail(part, exc)

        return run

    @property
    def failure(self) -> str | None:
        """The part whose unexpected failure ended `run()`, if any."""
        return self._failure

    def run(self) -> int:
        from dashkanban.inventory import Lookups
        from dashkanban.kanban import wiring
        from dashkanban.outbox import Outbox, delivery_lock
        from dashkanban.replay import build_pipeline, inventory_lookup, load_registry

        settings = self.settings
        registry = load_registry(settings)
        source = inventory_lookup(settings)
        # Inventory look-ups run on their own thread; capture only parks the sightings of a MAC
        # being looked up, and the answers' presses come back through `handle` below.
        lookups = Lookups(source) if source is not None else None
        pipeline = build_pipeline(settings, registry, inventory=lookups)
        with contextlib.ExitStack() as resources:  # closed in reverse order, also on errors
            if source is not None:
                resources.callback(source.close)
            outbox = resources.enter_context(Outbox.open(
                settings.outbox.path,
                max_rows=settings.outbox.max_rows,
                max_bytes=settings.outbox.max_bytes,
                metrics=self.metrics,
            ))
            # The daemon is the one that carries this outbox to Cumulocity (see delivery_lock).
            resources.enter_context(delivery_lock(settings.outbox.path, wait=True))
            kanban = wiring.open_loop(settings)  # after the outbox: it makes the state folder
            if kanban is not None and kanban.history is not None:
                resources.callback(kanban.history.close)
            self._serve(settings, registry, pipeline, lookups, outbox, kanban)
        if self._failure is not None:
            log.error("dashkanban stopped: %s failed", self._failure)
            return EXIT_FAILURE
        log.info("dashkanban stopped")
        return EXIT_OK

    def _serve(self, settings: Settings, registry: Registry, pipeline: Pipeline,
               lookups: Lookups | None, outbox: Outbox, kanban: KanbanLoop | None) -> None:
        """Start delivery, run the capture until stopped, then drain and stop delivery."""
        from dashkanban.c8y.mqtt import service_options
        from dashkanban.delivery import Courier
        from dashkanban.health import StateFile, notify
        from dashkanban.kanban import wiring
        from dashkanban.metrics import MetricsReporting
        from dashkanban.outbox import OutboxError, plural, press_key

        # `run` never gives up on Cumulocity: refusals and outages are retried for ever, at most
        # every [C8YMQTT] retry_max seconds (issue 11).
        uplink, router = wiring.make_uplink(settings, kanban, **service_options(settings))
        uplink.on_failure = lambda exc: self.fail("the uplink", exc)
        state = StateFile(settings.outbox.path)
        courier = Courier(outbox, uplink, on_delivered=self._delivered,
                          on_failure=lambda exc: self.fail("the delivery loop", exc))
        uplink.add_listener(self._count_reconnects(uplink, outbox, courier))
        uplink.add_listener(lambda: state.write(uplink.health()))
        if router is not None:
            router.queue = courier.put_lines
        if kanban is not None and kanban.history is not None:
            queued = wiring.queue_pending_clears(kanban.history, courier.put_lines)
            if queued:
                log.info("%d refill(s) from the command line queued for Cumulocity", queued)
            uplink.add_listener(self._fragments_once(uplink, kanban.bins))
        self.pipeline, self.outbox, self.uplink, self.courier = pipeline, outbox, uplink, courier
        reporting = MetricsReporting(settings.metrics, self.metrics, outbox.count,
                                     uplink=lambda: _uplink_reading(uplink))
        log.info(
            "dashkanban running: %s from %s, %s mode as %s to %s:%d, %s queued",
            plural(len(registry), "button"), settings.buttons.source, settings.gateway.mode,
            settings.gateway.serial, settings.c8y.tenant, settings.c8y.port,
            plural(outbox.count(), "event"),
        )
        state.write(uplink.health())
        uplink.start()
        courier.start()
        reporting.start()
        ticker = threading.Thread(target=self._supervised("the count sync", self._sync_loop),
                                  args=(pipeline,), daemon=True, name="count-sync")
        ticker.start()
        # Both end on stop and are joined below, before the outbox closes.
        helpers = [threading.Thread(target=self._supervised("the button reload",
                                                            self._reload_loop),
                                    args=(settings, pipeline, kanban), daemon=True,
                                    name="button-reload")]
        if kanban is not None and settings.kanban.alarms:
            helpers.append(threading.Thread(target=self._supervised("the overdue check",
                                                                    self._overdue_loop),
                                            args=(kanban, courier), daemon=True,
                                            name="kanban-overdue"))
        for helper in helpers:
            helper.start()
        handling = threading.Lock()  # presses come from the capture and the inventory threads

        def handle(press: Press) -> None:
            event = pipeline.event_for(press)
            with handling:
                extra = tuple(self.extra_lines(press)) if self.extra_lines is not None else ()
                others: tuple[tuple[str | None, str], ...] = ()
                if kanban is not None:
                    own, others = wiring.press_lines(kanban, press)
                    extra = own + extra
                try:
                    courier.put(event, extra, others)
                except OutboxError as exc:
                    log.error("%s pressed at %s but could not be queued: %s",
                              event.name, event.c8y_time, exc)
                    return
                # Its identity, as `replay` keeps it (design 8): a capture of the same presses
                # replayed later skips them instead of delivering them twice (issue 14).
                try:
                    outbox.remember([press_key(event)])
                except OutboxError as exc:  # queued all the same: only a later replay may repeat it
                    log.warning("%s pressed at %s: queued, but its identity was not kept (%s); "
                                "a replay of it would send it again",
                                event.name, event.c8y_time, exc)
            if not uplink.connected:
                why = f": {uplink.last_error}" if uplink.last_error is not None else ""
                log.info("%s (%s) pressed at %s: queued, Cumulocity not connected%s",
                         event.name, event.mac, event.c8y_time, why)
            self._sync(pipeline)

        buttons = self._button_broker(settings, registry, pipeline, handle, courier)
        if buttons is not None:
            helpers.append(buttons)
            buttons.start()
        if lookups is not None:
            lookups.notify = lambda: self._answered(pipeline, handle)
            lookups.on_failure = lambda exc: self.fail("the inventory look-ups", exc)
            lookups.start()
        # The outbox is open and the capture about to read: systemd may call us started.
        notify("READY=1")
        try:
            for press in pipeline.run_presses(self.source.frames(), clock=time.monotonic):
                handle(press)
        except DashkanbanError:
            raise  # a known error with its own message and exit code (e.g. no permission)
        except Exception as exc:  # noqa: BLE001 - logged by fail(); a bug here must end run
            self.fail("the capture", exc)
        finally:
            self._stopping.set()  # first: the watchdog pings end with it
            notify("STOPPING=1")
            if lookups is not None:
                lookups.stop()
            for helper in helpers:
                helper.join(timeout=HELPER_JOIN)
            self._sync(pipeline)
            if self._failure is None and not courier.drain(self.drain_on_stop):
                left = outbox.count()
                log.warning("stopping with %s queued; %s sent at the next start",
                            plural(left, "event"), "it is" if left == 1 else "they are")
            courier.stop()
            uplink.stop()
            reporting.stop()
            state.write(uplink.health(), running=False)

    def _button_broker(self, settings: Settings, registry: Registry, pipeline: Pipeline,
                       handle: Callable[[Press], None], courier: Courier
                       ) -> threading.Thread | None:
        """The MQTT buttons' source (issue 19), or None without `[mqtt_buttons]` or topics.

        Interim wiring until `run` is one asyncio loop (a11-core): the `ButtonBroker.run()`
        coroutine gets a thread and an event loop of its own, stops with the daemon (polled like
        the other helpers) and a failure of it ends `run()` with exit 1 (`_supervised`). At
        merge the lead moves `broker.run()` into the daemon's TaskGroup and drops this thread."""
        from dashkanban.mqtt_buttons.wiring import make_broker

        broker = make_broker(settings, registry, pipeline, handle, courier.put_lines)
        if broker is None:
            return None
        self.button_broker = broker

        async def until_stopped() -> None:
            task = asyncio.create_task(broker.run())
            try:
                while not self._stopping.is_set():
                    done, _ = await asyncio.wait({task}, timeout=RELOAD_POLL)
                    if done:
                        task.result()  # its exception ends run() (exit 1)
                        raise RuntimeError("the button broker's client returned")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        return threading.Thread(
            target=self._supervised("the button broker", lambda: asyncio.run(until_stopped())),
            daemon=True, name="button-broker")

    def _overdue_loop(self, kanban: KanbanLoop, courier: Courier) -> None:
        """Every `overdue_every` seconds (and at start: a reorder may have become overdue while
        the daemon was down), raise `c8y_KanbanOverdue` for each reorder open longer than its
        lead time (issue 18); the lines go through the outbox like every alarm."""
        from dashkanban.kanban.wiring import queue_overdue
        from dashkanban.outbox import OutboxError

        while True:
            try:
                queue_overdue(kanban, courier.put_lines, self._clock())
            except OutboxError as exc:  # full or failing: the capture logs its own; go on
                # The history has it as raised already (once per reorder): say it is lost.
                log.error("an overdue alarm could not be queued and is not raised: %s", exc)
            if self._stopping.wait(self.overdue_every):
                return

    def _reload_loop(self, settings: Settings, pipeline: Pipeline,
                     kanban: KanbanLoop | None) -> None:
        """The reload thread: after a SIGHUP, re-read MACID.csv off the signal handler."""
        while not self._stopping.wait(RELOAD_POLL):
            if self._reload_asked:
                self._reload_asked = False  # before reading: a SIGHUP from now on reads again
                self._reload_buttons(settings, pipeline, kanban)

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

    def _answered(self, pipeline: Pipeline, handle: Callable[[Press], None]) -> None:
        """On the inventory thread: the presses of the MACs just answered, through `handle`."""
        if self._stopping.is_set():
            return
        try:
            pipeline.answered(handle)
        except Exception:  # the worker thread must survive a failing press (logged, like capture)
            log.exception("a press from the inventory look-up could not be handled")

    def _fragments_once(self, uplink: object, bins: Bins) -> Callable[[], None]:
        """On the first connect: the c8y_Kanban fragments over REST, on a thread of their own
        (REST may be slow or unreachable; capture and delivery never wait for it)."""
        from dashkanban.kanban.wiring import publish_fragments_blocking as publish_fragments

        started = threading.Event()

        def listener() -> None:
            if started.is_set() or not getattr(uplink, "connected", False):
                return
            started.set()
            # A thread of its own: blocking REST calls that capture and delivery never wait for.
            threading.Thread(target=self._supervised("the Kanban fragment writer",
                                                     publish_fragments),
                             args=(self.settings, bins, self._stopping),
                             name="kanban-fragments", daemon=True).start()

        return listener

    def _count_reconnects(self, uplink: Uplink, outbox: Outbox,
                          courier: Courier) -> Callable[[], None]:
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
            if now and outage is not None and outage is not seen[0]:
                seen[0] = outage
                self._backlog_after(outage[0], outbox.count(), courier)

        return listener

    def _backlog_after(self, outage: float, backlog: int, courier: Courier) -> None:
        from dashkanban.health import duration

        target = courier.delivered + backlog
        text = f"connected again after {duration(outage)}; {{}} queued events delivered"
        if backlog == 0:
            log.warning(text.format(0))
            return
        with self._sync_lock:
            self._backlog_watch = (target, text.format(backlog))

    def _delivered(self, event: Event) -> None:
        if self.on_delivered is not None:
            self.on_delivered(event)
        # on_delivered comes before the Courier counts this one: hence the 1.
        self._check_backlog(1)

    def _sync_loop(self, pipeline: Pipeline) -> None:
        from dashkanban.health import notify, watchdog_interval

        watchdog = watchdog_interval()
        tick = COUNT_SYNC if watchdog is None else min(COUNT_SYNC, watchdog)
        while not self._stopping.wait(tick):
            self._sync(pipeline)
            self._check_backlog(0)
            if watchdog is not None and self._healthy():
                notify("WATCHDOG=1")  # none while a part is gone: systemd restarts us

    def _healthy(self) -> bool:
        courier, uplink = self.courier, self.uplink
        return (self._failure is None and courier is not None and courier.alive
                and uplink is not None and uplink.alive)

    def _check_backlog(self, coming: int) -> None:
        """Log the end-of-outage line once the backlog is out (`coming`: a delivery being
        reported that the Courier has not counted yet)."""
        watch = self._backlog_watch
        if watch is None or self.courier is None:
            return
        if self.courier.delivered + coming >= watch[0]:
            with self._sync_lock:
                if self._backlog_watch is not watch:
                    return
                self._backlog_watch = None
            log.warning("%s", watch[1])

    def _sync(self, pipeline: Pipeline) -> None:
        # The pipeline keeps plain counters on the hot path; the metrics get their increments.
        with self._sync_lock:
            now = pipeline.counts()
            before, self._synced = self._synced, now
        for name, value, old in (
            ("frames", now.packets, before.packets),
            ("candidates", now.candidates, before.candidates),
            ("malformed", now.malformed, before.malformed),
            ("presses", now.presses, before.presses),
        ):
            if value > old:
                self.metrics.add(name, value - old)  # type: ignore[arg-type]


class _SourceFilter:
    """The frame source's `set_filter` (LiveCapture's) for a reload; a source without a kernel
    filter (frames from stdin, a test's) has the matching changed only."""

    def __init__(self, source: object) -> None:
        self._set_filter = getattr(source, "set_filter", None)

    def set_filter(self, programs: Program | Sequence[Program]) -> Program | None:
        if self._set_filter is None:
            return None
        attached: Program | None = self._set_filter(programs)
        return attached


def _uplink_reading(uplink: Uplink) -> tuple[bool, int]:
    return uplink.connected, sum(link.refusals for link in uplink.health())


def run_command(args: argparse.Namespace) -> int:
    from dashkanban.capture.filters import kernel_programs
    from dashkanban.capture.live import LiveCapture, resolve_interface
    from dashkanban.privileges import refuse_root

    refuse_root(args.allow_root)
    settings = load_settings(find_config(args.config))
    interface = resolve_interface(args.interface or settings.capture.interface)
    capture = LiveCapture(interface, settings.capture.detect,
                          promiscuous=settings.capture.promiscuous,
                          programs=kernel_programs(settings))  # `source = csv`: the button list
    capture.check_permission()  # before connecting anywhere: exit 2 with the fix
    daemon = Daemon(settings, capture)
    _on_signals(daemon.stop, (signal.SIGTERM, signal.SIGINT))
    # SIGHUP (`systemctl reload dashkanban`): re-read MACID.csv without a restart (issue 16).
    signal.signal(signal.SIGHUP, lambda _signum, _frame: daemon.reload())
    log.info("capturing on %s (%s)", interface, ", ".join(sorted(settings.capture.detect)))
    return daemon.run()


def _on_signals(stop: Callable[[], None], signals: Iterable[signal.Signals]) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop()

    for sig in signals:
        signal.signal(sig, handler)
