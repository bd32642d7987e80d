"""The pipeline's counters: one thread-safe object, a periodic summary line, a Prometheus endpoint.

Each stage adds to its counter (capture: frames, candidates, malformed; presses: presses; the
outbox: queued, delivered, refused; the uplink: reconnects). The MQTT buttons' broker (issue 19)
adds its own (mqtt_messages, mqtt_presses, mqtt_malformed) and sets a gauge (connected); they
are shown only once a `ButtonBroker` was made with these metrics (`[mqtt_buttons]` is set), so
a store of Dash buttons sees no MQTT numbers. Live capture's own counts (frames the kernel dropped
because the receive ring was full, long frames handed over cut short: `LiveCapture.statistics()`)
are totals set with `capture_totals`, shown once it is called. `MetricsSnapshot` is the value
read out of it at one instant. The Prometheus endpoint uses a registry of its own, never the
library's global one, so two pipelines in one process (tests, `demo`) do not collide, and it
listens on 127.0.0.1 only: the numbers name nothing secret, but nobody off the box needs them.

The summary line and the endpoint are coroutines of the daemon's event loop (issue 11):
`MetricsReporting.open()` listens (a taken port is a configuration error, exit 2), `run()` logs
the summary on an asyncio timer and serves scrapes with `asyncio.start_server`, in the text format
prometheus-client makes (its own content negotiation), until cancelled; then one last summary line.
The outbox's row count may be an awaitable (the writer thread's), so no SQLite read runs on the
loop.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from dashkanban.config import MetricsSettings

log = logging.getLogger(__name__)

CounterName = Literal[
    "frames", "candidates", "malformed", "presses", "queued", "delivered", "reconnects", "refused",
    "quarantined", "c8y_refused",
]
COUNTERS: tuple[CounterName, ...] = get_args(CounterName)

# What each counter means, shown as the Prometheus HELP text.
HELP: Mapping[CounterName, str] = {
    "frames": "Frames read from the capture source (after the kernel filter).",
    "candidates": "Frames that decoded as an ARP, DHCP or NDP sighting.",
    "malformed": "Frames that were cut short or hostile and were dropped.",
    "presses": "Presses of known buttons, after the dead time.",
    "queued": "Events committed to the outbox.",
    "delivered": "Events acknowledged by the broker (PUBACK) and removed from the outbox.",
    "reconnects": "Connections to the broker re-established after a loss.",
    "refused": "Events refused because the outbox reached its cap.",
    "quarantined": "Outbox rows that could not be read, moved to its quarantine table (kept).",
    "c8y_refused": "SmartREST lines Cumulocity accepted (PUBACK) and then refused with an error "
    "on s/e; each is logged as ERROR with the line, and counted in the outbox file.",
}
# The button broker's (mqtt_buttons/source.py): messages read on its topics, presses the buttons
# reported (a repeated Shelly event_cnt left out; the dead time comes after, in `presses`),
# messages no format could read.
ButtonCounterName = Literal["mqtt_messages", "mqtt_presses", "mqtt_malformed"]
BUTTON_COUNTERS: tuple[ButtonCounterName, ...] = get_args(ButtonCounterName)
BUTTON_HELP: Mapping[ButtonCounterName, str] = {
    "mqtt_messages": "Messages the button broker delivered on the MQTT buttons' topics.",
    "mqtt_presses": "Presses the MQTT buttons reported (before the dead time; a repeated "
    "Shelly event_cnt not counted).",
    "mqtt_malformed": "Messages on the MQTT buttons' topics that no format could read "
    "(logged at DEBUG, dropped).",
}
# Live capture's (LiveCapture.statistics(), totals since start): the kernel's PACKET_STATISTICS
# drops, and frames longer than a ring slot handed over cut short (capture/ring.py).
CaptureCounterName = Literal["capture_dropped", "capture_truncated"]
CAPTURE_COUNTERS: tuple[CaptureCounterName, ...] = get_args(CaptureCounterName)
CAPTURE_HELP: Mapping[CaptureCounterName, str] = {
    "capture_dropped": "Frames the kernel filter passed and dropped because the capture "
    "socket's receive ring (or buffer) was full.",
    "capture_truncated": "Frames longer than a receive ring slot handed over cut to 190 bytes "
    "(the socket's receive buffer was full); logged once at WARNING.",
}
# The daemon's press queue (commands/run.py PRESS_QUEUE): presses lost because it was full (the
# outbox writer stuck, or a flood). Shown once one is lost, so a healthy daemon's output stays.
PRESSES_LOST_HELP = ("Presses lost because the queue to the outbox writer was full (the disk "
                     "hung or a source flooded); each stretch is logged at ERROR.")
PREFIX = "dashkanban"
LOOPBACK = "127.0.0.1"
REQUEST_LIMIT = 16 * 1024  # bytes of a scrape's request head; more is not a scraper
REQUEST_WAIT = 10.0  # seconds a scrape may take to send its request and read the answer
ROWS_WAIT = 2.0  # seconds a scrape or summary line waits for the outbox's row count


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    frames: int = 0
    candidates: int = 0
    malformed: int = 0
    presses: int = 0
    queued: int = 0
    delivered: int = 0
    reconnects: int = 0
    refused: int = 0
    quarantined: int = 0
    c8y_refused: int = 0
    buttons: ButtonsSnapshot | None = None  # with a button broker (`[mqtt_buttons]`)
    capture: CaptureSnapshot | None = None  # with live capture (`capture_totals`)
    presses_lost: int | None = None  # once the press queue lost one (`press_lost`)

    def items(self) -> Iterator[tuple[CounterName, int]]:
        for name in COUNTERS:
            yield name, getattr(self, name)


@dataclass(frozen=True, slots=True)
class ButtonsSnapshot:
    """The button broker's counters, and whether it is connected and subscribed."""

    mqtt_messages: int = 0
    mqtt_presses: int = 0
    mqtt_malformed: int = 0
    connected: bool = False

    def items(self) -> Iterator[tuple[ButtonCounterName, int]]:
        for name in BUTTON_COUNTERS:
            yield name, getattr(self, name)


@dataclass(frozen=True, slots=True)
class CaptureSnapshot:
    """Live capture's totals (LiveCapture.statistics())."""

    capture_dropped: int = 0
    capture_truncated: int = 0

    def items(self) -> Iterator[tuple[CaptureCounterName, int]]:
        for name in CAPTURE_COUNTERS:
            yield name, getattr(self, name)


def summary_line(snapshot: MetricsSnapshot, outbox_rows: int | None = None) -> str:
    """The periodic log line: `frames=… candidates=… … refused=…`, the button broker's
    `mqtt_messages=… mqtt_presses=… mqtt_malformed=… mqtt_connected=0|1` when there is one, and
    `outbox=N` when known."""
    text = " ".join(f"{name}={value}" for name, value in snapshot.items())
    if snapshot.buttons is not None:
        buttons = snapshot.buttons
        text += "".join(f" {name}={value}" for name, value in buttons.items())
        text += f" mqtt_connected={int(buttons.connected)}"
    if snapshot.capture is not None:
        text += "".join(f" {name}={value}" for name, value in snapshot.capture.items())
    if snapshot.presses_lost is not None:
        text += f" presses_lost={snapshot.presses_lost}"
    return text if outbox_rows is None else f"{text} outbox={outbox_rows}"


class Metrics:
    """The counters; `add` may be called from any thread."""

    def __init__(self) -> None:
        # Not a thread of its own: the outbox counts on the writer thread its blocking SQLite
        # work is handed off to (outbox/writer.py), the rest of `run` on the loop.
        self._lock = threading.Lock()
        self._values: dict[CounterName | ButtonCounterName, int] = dict.fromkeys(
            (*COUNTERS, *BUTTON_COUNTERS), 0)
        self._buttons = False  # a button broker counts here (`track_buttons`)
        self._buttons_connected = False
        self._capture: CaptureSnapshot | None = None
        self._presses_lost: int | None = None

    def add(self, name: CounterName | ButtonCounterName, amount: int = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            self._values[name] += amount  # KeyError for an unknown name: a programming error

    def track_buttons(self) -> None:
        """A button broker counts here from now on: its counters and gauge are shown (zero
        until it counts), in the summary line and on /metrics."""
        with self._lock:
            self._buttons = True

    def buttons_connected(self, connected: bool) -> None:
        """The button broker's gauge: connected and subscribed, or not."""
        with self._lock:
            self._buttons = True
            self._buttons_connected = connected

    def capture_totals(self, dropped: int, truncated: int) -> None:
        """Live capture's totals since start (`LiveCapture.statistics()`: drops, truncated),
        shown from now on; a total never goes down."""
        with self._lock:
            old = self._capture or CaptureSnapshot()
            self._capture = CaptureSnapshot(max(old.capture_dropped, dropped),
                                            max(old.capture_truncated, truncated))

    def press_lost(self) -> None:
        """A press did not fit in the daemon's press queue; shown from now on."""
        with self._lock:
            self._presses_lost = (self._presses_lost or 0) + 1

    def presses_lost(self) -> int:
        """Presses lost since start (`press_lost`): the one count, which the state file shows
        too (`outbox status`)."""
        with self._lock:
            return self._presses_lost or 0

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            values = self._values
            buttons = ButtonsSnapshot(
                **{name: values[name] for name in BUTTON_COUNTERS},
                connected=self._buttons_connected,
            ) if self._buttons else None
            return MetricsSnapshot(**{name: values[name] for name in COUNTERS},
                                   buttons=buttons, capture=self._capture,
                                   presses_lost=self._presses_lost)


assert {f.name for f in fields(MetricsSnapshot)} == {*COUNTERS, "buttons", "capture",
                                                     "presses_lost"}
assert {f.name for f in fields(CaptureSnapshot)} == set(CAPTURE_COUNTERS)
assert {f.name for f in fields(ButtonsSnapshot)} == {*BUTTON_COUNTERS, "connected"}


# How many events wait in the outbox: a plain call (tests, a cheap count) or an awaitable one,
# e.g. `lambda: writer.call(outbox.count)` so that the SQLite read never runs on the loop.
OutboxRows = Callable[[], int | Awaitable[int]]


class OneCount:
    """`outbox_rows` asked once at a time: while a count is pending (a busy or stuck writer
    thread), a scrape or summary line waits on that same count instead of queueing one more on
    the writer thread, where each would wait behind the stuck call (one per line and scrape,
    for as long as it hangs). Callable as an OutboxRows; read_rows' timeout leaves the pending
    count running for the next caller."""

    def __init__(self, outbox_rows: OutboxRows) -> None:
        self._rows = outbox_rows
        self._pending: asyncio.Future[int] | None = None

    def __call__(self) -> int | Awaitable[int]:
        if self._pending is None or self._pending.done():
            rows = self._rows()
            if not inspect.isawaitable(rows):
                return rows
            self._pending = asyncio.ensure_future(rows)
            # Read here too: a count that fails after its callers gave up is not an
            # "exception never retrieved" on the loop (read_rows logs those it sees).
            self._pending.add_done_callback(lambda done: done.cancelled() or done.exception())
        return asyncio.shield(self._pending)


def one_count(outbox_rows: OutboxRows | None) -> OneCount | None:
    """`outbox_rows` as a OneCount (the same one when it is already)."""
    if outbox_rows is None or isinstance(outbox_rows, OneCount):
        return outbox_rows
    return OneCount(outbox_rows)


async def read_rows(outbox_rows: OutboxRows | None) -> int | None:
    """The outbox's row count, or None when unknown, failing or slower than ROWS_WAIT (a
    closed, failing or stuck outbox must cost a summary line or a scrape its `outbox` value,
    never the line or the scrape: they are how a stuck writer is seen, e.g. presses_lost)."""
    if outbox_rows is None:
        return None
    try:
        async with asyncio.timeout(ROWS_WAIT):
            rows = outbox_rows()
            return await rows if inspect.isawaitable(rows) else rows
    except TimeoutError:
        log.debug("outbox row count took over %g s: the writer thread is busy or stuck",
                  ROWS_WAIT)
        return None
    except Exception:  # logged at DEBUG: see above
        log.debug("outbox row count failed", exc_info=True)
        return None


class SummaryLogger:
    """Logs `summary_line` every `interval` seconds, and once more when cancelled."""

    def __init__(
        self,
        metrics: Metrics,
        interval: float,
        outbox_rows: OutboxRows | None = None,
    ) -> None:
        self._metrics = metrics
        self._interval = interval
        self._outbox_rows = one_count(outbox_rows)

    async def log_now(self) -> None:
        rows = await read_rows(self._outbox_rows)
        log.info("counters: %s", summary_line(self._metrics.snapshot(), rows))

    async def run(self) -> None:
        """Until cancelled; the last line then says what the counters came to."""
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self.log_now()
        finally:
            await self.log_now()


# The uplink as the metrics see it: (connected, refused logins since start).
UplinkReading = Callable[[], tuple[bool, int]]


@dataclass(frozen=True, slots=True)
class _Reading:
    """The values of one scrape, read before the text is made."""

    snapshot: MetricsSnapshot
    rows: int | None
    uplink: tuple[bool, int] | None

    def collect(self) -> Iterator[object]:
        """prometheus-client's custom-collector protocol."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, value in self.snapshot.items():
            yield CounterMetricFamily(f"{PREFIX}_{name}", HELP[name], value=value)
        if self.uplink is not None:
            connected, refusals = self.uplink
            yield GaugeMetricFamily(
                f"{PREFIX}_uplink_connected",
                "1 while every MQTT connection to Cumulocity is up and past its start-up "
                "sequence, else 0.",
                value=1 if connected else 0,
            )
            yield CounterMetricFamily(
                f"{PREFIX}_uplink_refusals",
                "Logins Cumulocity refused (CONNACK 1, 2, 4, 5 or a refused certificate).",
                value=refusals,
            )
        buttons = self.snapshot.buttons
        if buttons is not None:
            for button_name, value in buttons.items():
                yield CounterMetricFamily(f"{PREFIX}_{button_name}", BUTTON_HELP[button_name],
                                          value=value)
            yield GaugeMetricFamily(
                f"{PREFIX}_mqtt_buttons_connected",
                "1 while the connection to the MQTT buttons' broker ([mqtt_buttons]) is up and "
                "subscribed, else 0.",
                value=1 if buttons.connected else 0,
            )
        if self.snapshot.capture is not None:
            for capture_name, value in self.snapshot.capture.items():
                yield CounterMetricFamily(f"{PREFIX}_{capture_name}", CAPTURE_HELP[capture_name],
                                          value=value)
        if self.snapshot.presses_lost is not None:
            yield CounterMetricFamily(f"{PREFIX}_presses_lost", PRESSES_LOST_HELP,
                                      value=self.snapshot.presses_lost)
        if self.rows is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_outbox_events",
                "Events waiting in the outbox.",
                value=self.rows,
            )

    def exposition(self, accept: str, accept_encoding: str) -> tuple[bytes, list[str]]:
        """The body and its headers, negotiated as prometheus-client's own server does (text
        format 0.0.4 unless the scraper asks for another; gzip when accepted)."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder, gzip_accepted

        registry = CollectorRegistry(auto_describe=False)  # its own: no process or GC metrics
        registry.register(self)  # type: ignore[arg-type]  # a collector by protocol
        encoder, content_type = choose_encoder(accept)
        body = encoder(registry)
        headers = [f"Content-Type: {content_type}"]
        if gzip_accepted(accept_encoding):
            body = gzip.compress(body)
            headers.append("Content-Encoding: gzip")
        return body, headers


class MetricsServer:
    """Prometheus text format on http://127.0.0.1:PORT/metrics (any path answers), served on the
    event loop (`asyncio.start_server`): one short HTTP/1.1 exchange per connection."""

    def __init__(
        self, metrics: Metrics, port: int, outbox_rows: OutboxRows | None = None,
        uplink: UplinkReading | None = None,
    ) -> None:
        self._metrics = metrics
        self._requested_port = port
        self._outbox_rows = one_count(outbox_rows)
        self._uplink = uplink
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        """Listen; ConfigError (exit 2) when the port is taken."""
        from dashkanban.errors import ConfigError

        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(
                self._serve, LOOPBACK, self._requested_port, limit=REQUEST_LIMIT)
        except OSError as exc:
            # asyncio rewords the system's reason; the errno says it as `ss` or `bind` would.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(
                f"[metrics] port = {self._requested_port}: cannot listen on "
                f"{LOOPBACK}:{self._requested_port} ({reason}); pick a free port"
            ) from None
        log.info("metrics on http://%s:%d/metrics", LOOPBACK, self.port)

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop listening (for a start that failed between `open` and `run`). Idempotent."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def run(self) -> None:
        """Serve until cancelled (opening first if `open` was not awaited); then stop listening."""
        await self.open()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_WAIT):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(await self._answer(head))
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a scraper that went away, dawdled, or sent a head too long: nothing to say
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        method = lines[0].split(" ", 1)[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", ["Allow: GET, HEAD"], b"")
        reading = _Reading(
            self._metrics.snapshot(),
            await read_rows(self._outbox_rows),
            self._uplink() if self._uplink is not None else None,
        )
        body, fields = reading.exposition(headers.get("accept", ""),
                                          headers.get("accept-encoding", ""))
        response = _response("200 OK", fields, body)
        return response[: len(response) - len(body)] if method == "HEAD" else response


def _response(status: str, fields: list[str], body: bytes) -> bytes:
    head = [f"HTTP/1.1 {status}", *fields, f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class MetricsReporting:
    """What `run` keeps from `[metrics]`: the summary line always, the endpoint when a port is set.

    ```python
    reporting = MetricsReporting(settings.metrics, metrics, outbox_rows, uplink=reading)
    await reporting.open()  # ConfigError (exit 2) if the port is taken: before the TaskGroup
    group.create_task(reporting.run())  # until cancelled; logs a last summary line then
    ```
    """

    def __init__(
        self,
        settings: MetricsSettings,
        metrics: Metrics,
        outbox_rows: OutboxRows | None = None,
        uplink: UplinkReading | None = None,
    ) -> None:
        # One pending count shared by the summary line and the scrapes (OneCount).
        outbox_rows = one_count(outbox_rows)
        self.summary = SummaryLogger(metrics, settings.log_interval, outbox_rows)
        self.server: MetricsServer | None = None
        if settings.port is not None:
            self.server = MetricsServer(metrics, settings.port, outbox_rows, uplink)

    async def open(self) -> None:
        if self.server is not None:
            await self.server.open()

    def close(self) -> None:
        """Free the port (`run` does it when it ends; this is for a start that failed before
        `run`). Idempotent."""
        if self.server is not None:
            self.server.close()

    async def run(self) -> None:
        """The summary timer and the endpoint, until cancelled."""
        async with asyncio.TaskGroup() as group:
            if self.server is not None:
                group.create_task(self.server.run())
            group.create_task(self.summary.run())
