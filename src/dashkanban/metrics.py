"""The pipeline's counters: one thread-safe object, a periodic summary line, a Prometheus endpoint.

Each stage adds to its counter (capture: frames, candidates, malformed; presses: presses; the
outbox: queued, delivered, refused; the uplink: reconnects). `MetricsSnapshot` is the value read out
of it at one instant. The Prometheus endpoint uses a registry of its own, never the library's global
one, so two pipelines in one process (tests, `demo`) do not collide, and it listens on 127.0.0.1
only: the numbers name nothing secret, but nobody off the box needs them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

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
PREFIX = "dashkanban"
LOOPBACK = "127.0.0.1"


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

    def items(self) -> Iterator[tuple[CounterName, int]]:
        for name in COUNTERS:
            yield name, getattr(self, name)


def summary_line(snapshot: MetricsSnapshot, outbox_rows: int | None = None) -> str:
    """The periodic log line: `frames=… candidates=… … refused=…` (and `outbox=N` when known)."""
    text = " ".join(f"{name}={value}" for name, value in snapshot.items())
    return text if outbox_rows is None else f"{text} outbox={outbox_rows}"


class Metrics:
    """The counters; `add` may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[CounterName, int] = dict.fromkeys(COUNTERS, 0)

    def add(self, name: CounterName, amount: int = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            self._values[name] += amount  # KeyError for an unknown name: a programming error

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            return MetricsSnapshot(**self._values)


assert {f.name for f in fields(MetricsSnapshot)} == set(COUNTERS)


class SummaryLogger:
    """Logs `summary_line` every `interval` seconds on a daemon thread, and once more on stop."""

    def __init__(
        self,
        metrics: Metrics,
        interval: float,
        outbox_rows: Callable[[], int] | None = None,
    ) -> None:
        self._metrics = metrics
        self._interval = interval
        self._outbox_rows = outbox_rows
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # A timer thread: the summary line must come even while capture waits for frames.
        self._thread = threading.Thread(target=self._run, name="metrics-summary", daemon=True)
        self._thread.start()

    def log_now(self) -> None:
        rows: int | None = None
        if self._outbox_rows is not None:
            try:
                rows = self._outbox_rows()
            except Exception:  # a summary line must never take the daemon down
                log.debug("outbox row count failed", exc_info=True)
        log.info("counters: %s", summary_line(self._metrics.snapshot(), rows))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.log_now()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.log_now()


# The uplink as the metrics see it: (connected, refused logins since start).
UplinkReading = Callable[[], tuple[bool, int]]


class _Collector:
    """Reads the counters at scrape time (prometheus-client's custom-collector protocol)."""

    def __init__(self, metrics: Metrics, outbox_rows: Callable[[], int] | None,
                 uplink: UplinkReading | None = None) -> None:
        self._metrics = metrics
        self._outbox_rows = outbox_rows
        self._uplink = uplink

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, value in self._metrics.snapshot().items():
            yield CounterMetricFamily(f"{PREFIX}_{name}", HELP[name], value=value)
        if self._uplink is not None:
            connected, refusals = self._uplink()
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
        if self._outbox_rows is not None:
            try:
                rows = self._outbox_rows()
            except Exception:  # a closed or failing outbox must not fail the whole scrape
                log.debug("outbox row count failed", exc_info=True)
                return
            yield GaugeMetricFamily(
                f"{PREFIX}_outbox_events",
                "Events waiting in the outbox.",
                value=rows,
            )


class MetricsServer:
    """Prometheus text format on http://127.0.0.1:PORT/metrics (any path answers)."""

    def __init__(
        self, metrics: Metrics, port: int, outbox_rows: Callable[[], int] | None = None,
        uplink: UplinkReading | None = None,
    ) -> None:
        self._metrics = metrics
        self._requested_port = port
        self._outbox_rows = outbox_rows
        self._uplink = uplink
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        from dashkanban.errors import ConfigError

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(  # type: ignore[arg-type]
            self._metrics, self._outbox_rows, self._uplink))
        try:
            self._server, self._thread = start_http_server(
                self._requested_port, addr=LOOPBACK, registry=registry
            )
        except OSError as exc:
            raise ConfigError(
                f"[metrics] port = {self._requested_port}: cannot listen on "
                f"{LOOPBACK}:{self._requested_port} ({exc.strerror}); pick a free port"
            ) from None
        log.info("metrics on http://%s:%d/metrics", LOOPBACK, self.port)

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class MetricsReporting:
    """What `run` starts from `[metrics]`: the summary line always, the endpoint when a port is set.

    ```python
    reporting = MetricsReporting(settings.metrics, metrics, outbox.count)
    reporting.start()  # ConfigError if the port is taken
    ...
    reporting.stop()  # logs a last summary line
    ```
    """

    def __init__(
        self,
        settings: MetricsSettings,
        metrics: Metrics,
        outbox_rows: Callable[[], int] | None = None,
        uplink: UplinkReading | None = None,
    ) -> None:
        self.summary = SummaryLogger(metrics, settings.log_interval, outbox_rows)
        self.server: MetricsServer | None = None
        if settings.port is not None:
            self.server = MetricsServer(metrics, settings.port, outbox_rows, uplink)

    def start(self) -> None:
        if self.server is not None:
            self.server.start()
        self.summary.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.summary.stop()
