"""The counters, the summary line, and the Prometheus endpoint scraped over real loopback HTTP."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.request

import pytest

from dashkanban.config import MetricsSettings
from dashkanban.errors import ConfigError
from dashkanban.metrics import (
    COUNTERS,
    Metrics,
    MetricsReporting,
    MetricsServer,
    MetricsSnapshot,
    SummaryLogger,
    summary_line,
)


def test_counters_from_many_threads_add_up_exactly() -> None:
    metrics = Metrics()

    def work() -> None:
        for _ in range(5000):
            metrics.add("frames")
            metrics.add("candidates", 2)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert metrics.snapshot() == MetricsSnapshot(frames=20000, candidates=40000)


def test_counters_only_go_up_and_names_are_checked() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="counters only go up"):
        metrics.add("frames", -1)
    with pytest.raises(KeyError):
        metrics.add("framez")  # type: ignore[arg-type]
    assert COUNTERS == (
        "frames", "candidates", "malformed", "presses", "queued", "delivered", "reconnects",
        "refused", "quarantined", "c8y_refused",
    )


def test_summary_line() -> None:
    snapshot = MetricsSnapshot(frames=1200, candidates=40, malformed=2, presses=7, queued=7,
                               delivered=5, reconnects=1, refused=0)
    assert summary_line(snapshot) == (
        "frames=1200 candidates=40 malformed=2 presses=7 queued=7 delivered=5 reconnects=1 "
        "refused=0 quarantined=0 c8y_refused=0"
    )
    assert summary_line(snapshot, outbox_rows=2).endswith(
        " refused=0 quarantined=0 c8y_refused=0 outbox=2")


def test_summary_is_logged_periodically_and_once_more_on_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dashkanban.metrics")
    metrics = Metrics()
    metrics.add("presses", 3)
    logger = SummaryLogger(metrics, interval=0.01, outbox_rows=lambda: 4)
    logger.start()
    deadline = time.monotonic() + 10
    while len(caplog.records) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    metrics.add("delivered")
    logger.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 3
    assert set(lines[:2]) == {
        "counters: frames=0 candidates=0 malformed=0 presses=3 queued=0 delivered=0 "
        "reconnects=0 refused=0 quarantined=0 c8y_refused=0 outbox=4"
    }
    assert lines[-1] == (
        "counters: frames=0 candidates=0 malformed=0 presses=3 queued=0 delivered=1 "
        "reconnects=0 refused=0 quarantined=0 c8y_refused=0 outbox=4"
    )


def _scrape(port: int) -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


def test_prometheus_endpoint_serves_every_counter_on_loopback() -> None:
    metrics = Metrics()
    metrics.add("frames", 1200)
    metrics.add("malformed", 2)
    metrics.add("reconnects")
    rows = [5]
    server = MetricsServer(metrics, 0, outbox_rows=lambda: rows[0])
    server.start()
    try:
        content_type, body = _scrape(server.port)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        samples = [line for line in body.splitlines() if not line.startswith("#")]
        assert samples == [
            "dashkanban_frames_total 1200.0",
            "dashkanban_candidates_total 0.0",
            "dashkanban_malformed_total 2.0",
            "dashkanban_presses_total 0.0",
            "dashkanban_queued_total 0.0",
            "dashkanban_delivered_total 0.0",
            "dashkanban_reconnects_total 1.0",
            "dashkanban_refused_total 0.0",
            "dashkanban_quarantined_total 0.0",
            "dashkanban_c8y_refused_total 0.0",
            "dashkanban_outbox_events 5.0",
        ]
        assert "# TYPE dashkanban_frames_total counter" in body.splitlines()
        assert "# TYPE dashkanban_outbox_events gauge" in body.splitlines()
        assert (
            "# HELP dashkanban_refused_total Events refused because the outbox reached its cap."
            in body.splitlines()
        )
        metrics.add("delivered", 3)
        rows[0] = 2
        _, body = _scrape(server.port)
        assert "dashkanban_delivered_total 3.0" in body.splitlines()
        assert "dashkanban_outbox_events 2.0" in body.splitlines()
        # Its own registry: nothing from prometheus-client's global one (process, GC metrics).
        assert "python_gc_objects_collected_total" not in body
        # Loopback only: the same port on another local address is not served.
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex(("127.0.0.2", server.port)) != 0
    finally:
        server.stop()


def test_a_failing_outbox_count_leaves_the_counters_scrapable() -> None:
    def broken() -> int:
        raise RuntimeError("outbox closed")

    server = MetricsServer(Metrics(), 0, outbox_rows=broken)
    server.start()
    try:
        _, body = _scrape(server.port)
    finally:
        server.stop()
    assert "dashkanban_frames_total 0.0" in body.splitlines()
    assert "dashkanban_outbox_events" not in body


def test_a_busy_port_is_a_config_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = MetricsServer(Metrics(), port)
        with pytest.raises(ConfigError) as info:
            server.start()
    assert info.value.exit_code == 2
    assert str(info.value) == (
        f"[metrics] port = {port}: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "pick a free port"
    )


def test_reporting_from_settings_serves_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dashkanban.metrics")
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free now; the server binds it right after
    metrics = Metrics()
    metrics.add("queued", 2)
    reporting = MetricsReporting(MetricsSettings(port=port, log_interval=300), metrics, lambda: 2)
    reporting.start()
    try:
        _, body = _scrape(port)
        assert "dashkanban_queued_total 2.0" in body.splitlines()
    finally:
        reporting.stop()
    assert [r.getMessage() for r in caplog.records] == [
        f"metrics on http://127.0.0.1:{port}/metrics",
        "counters: frames=0 candidates=0 malformed=0 presses=0 queued=2 delivered=0 "
        "reconnects=0 refused=0 quarantined=0 c8y_refused=0 outbox=2",
    ]
    without_port = MetricsReporting(MetricsSettings(port=None, log_interval=300), metrics)
    assert without_port.server is None
