"""The counters, the summary line, and the Prometheus endpoint scraped over real loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import threading
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from dashkanban.config import MetricsSettings
from dashkanban.errors import ConfigError
from dashkanban.metrics import (
    COUNTERS,
    ButtonsSnapshot,
    CaptureSnapshot,
    Metrics,
    MetricsReporting,
    MetricsServer,
    MetricsSnapshot,
    SummaryLogger,
    summary_line,
)

T = TypeVar("T")


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


def test_the_button_brokers_numbers_show_only_once_one_counts_here() -> None:
    """Issue 19: a store without `[mqtt_buttons]` keeps its line; with a broker the line and
    the snapshot carry its counters and its connection, zero before it counts."""
    metrics = Metrics()
    assert metrics.snapshot().buttons is None
    metrics.track_buttons()
    assert metrics.snapshot().buttons == ButtonsSnapshot()
    metrics.add("mqtt_messages", 5)
    metrics.add("mqtt_presses", 3)
    metrics.add("mqtt_malformed")
    metrics.buttons_connected(True)
    snapshot = metrics.snapshot()
    assert snapshot.buttons == ButtonsSnapshot(5, 3, 1, connected=True)
    assert summary_line(snapshot, outbox_rows=0) == (
        "frames=0 candidates=0 malformed=0 presses=0 queued=0 delivered=0 reconnects=0 "
        "refused=0 quarantined=0 c8y_refused=0 mqtt_messages=5 mqtt_presses=3 mqtt_malformed=1 "
        "mqtt_connected=1 outbox=0")
    with pytest.raises(ValueError, match="counters only go up"):
        metrics.add("mqtt_presses", -1)


def test_live_captures_drops_and_cut_frames_show_once_it_reports_them() -> None:
    """LiveCapture.statistics() totals: absent (the line as before) until reported, then on the
    summary line and /metrics; a total never goes down."""
    metrics = Metrics()
    assert metrics.snapshot().capture is None
    metrics.capture_totals(dropped=3, truncated=1)
    metrics.capture_totals(dropped=2, truncated=4)  # a late, older reading: the totals stay
    snapshot = metrics.snapshot()
    assert snapshot.capture == CaptureSnapshot(3, 4)
    assert summary_line(snapshot, outbox_rows=0) == (
        "frames=0 candidates=0 malformed=0 presses=0 queued=0 delivered=0 reconnects=0 "
        "refused=0 quarantined=0 c8y_refused=0 capture_dropped=3 capture_truncated=4 outbox=0")
    server = MetricsServer(metrics, 0)

    async def check() -> None:
        _, body = await scrape(server.port)
        assert samples(body)[-2:] == ["dashkanban_capture_dropped_total 3.0",
                                      "dashkanban_capture_truncated_total 4.0"]

    serving(server, check)


def test_summary_is_logged_periodically_and_once_more_on_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dashkanban.metrics")
    metrics = Metrics()
    metrics.add("presses", 3)
    logger = SummaryLogger(metrics, interval=0.01, outbox_rows=lambda: 4)

    async def main() -> None:
        task = asyncio.create_task(logger.run())
        async with asyncio.timeout(10):
            while len(caplog.records) < 2:
                await asyncio.sleep(0.01)
        metrics.add("delivered")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
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


def _scrape(port: int, **headers: str) -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


async def scrape(port: int, **headers: str) -> tuple[str, str]:
    """A real HTTP GET on 127.0.0.1 from another thread, while the server runs on this loop."""
    return await asyncio.to_thread(_scrape, port, **headers)


def serving(server: MetricsServer, check: Callable[[], Awaitable[T]]) -> T:
    """`check()` while `server.run()` is a task of the loop, as in the daemon."""

    async def main() -> T:
        await server.open()
        task = asyncio.create_task(server.run())
        try:
            return await check()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return asyncio.run(main())


def samples(body: str) -> list[str]:
    return [line for line in body.splitlines() if not line.startswith("#")]


def test_prometheus_endpoint_serves_every_counter_on_loopback() -> None:
    metrics = Metrics()
    metrics.add("frames", 1200)
    metrics.add("malformed", 2)
    metrics.add("reconnects")
    rows = [5]
    server = MetricsServer(metrics, 0, outbox_rows=lambda: rows[0])

    async def check() -> None:
        content_type, body = await scrape(server.port)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        assert samples(body) == [
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
        _, body = await scrape(server.port)
        assert "dashkanban_delivered_total 3.0" in body.splitlines()
        assert "dashkanban_outbox_events 2.0" in body.splitlines()
        # Its own registry: nothing from prometheus-client's global one (process, GC metrics).
        assert "python_gc_objects_collected_total" not in body
        # Loopback only: the same port on another local address is not served.
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex(("127.0.0.2", server.port)) != 0

    serving(server, check)


def test_the_uplink_gauges_and_an_outbox_count_off_the_loop() -> None:
    """The uplink's health (issue 11) and an awaitable row count, as the daemon passes it to
    keep the SQLite read off the loop (`writer.call(outbox.count)`)."""
    from dashkanban.outbox.writer import Writer

    reading = [(False, 3)]
    writer = Writer("metrics-test")
    server = MetricsServer(Metrics(), 0, outbox_rows=lambda: writer.call(int, "7"),
                           uplink=lambda: reading[0])

    async def check() -> list[str]:
        _, body = await scrape(server.port)
        reading[0] = (True, 3)
        _, again = await scrape(server.port)
        return [*samples(body)[-3:], *samples(again)[-3:-1], *body.splitlines()]

    try:
        got = serving(server, check)
    finally:
        writer.close()
    assert got[:5] == [
        "dashkanban_uplink_connected 0.0",
        "dashkanban_uplink_refusals_total 3.0",
        "dashkanban_outbox_events 7.0",
        "dashkanban_uplink_connected 1.0",
        "dashkanban_uplink_refusals_total 3.0",
    ]
    assert "# TYPE dashkanban_uplink_connected gauge" in got
    assert "# TYPE dashkanban_uplink_refusals_total counter" in got


def test_a_failing_outbox_count_leaves_the_counters_scrapable() -> None:
    def broken() -> int:
        raise RuntimeError("outbox closed")

    server = MetricsServer(Metrics(), 0, outbox_rows=broken)
    _, body = serving(server, lambda: scrape(server.port))
    assert "dashkanban_frames_total 0.0" in body.splitlines()
    assert "dashkanban_outbox_events" not in body


def test_hostile_requests_are_answered_or_dropped_and_the_endpoint_goes_on() -> None:
    server = MetricsServer(Metrics(), 0)

    def raw(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as peer:
            peer.sendall(data)
            peer.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := peer.recv(65536):
                answer += chunk
            return answer

    async def check() -> tuple[bytes, bytes, bytes, bytes, str]:
        post = await asyncio.to_thread(raw, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        huge = await asyncio.to_thread(raw, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")
        cut = await asyncio.to_thread(raw, b"GET /metrics HTT")
        head = await asyncio.to_thread(raw, b"HEAD / HTTP/1.1\r\n\r\n")
        _, body = await scrape(server.port)
        return post, huge, cut, head, body

    post, huge, cut, head, body = serving(server, check)
    assert post.split(b"\r\n")[:2] == [b"HTTP/1.1 405 Method Not Allowed", b"Allow: GET, HEAD"]
    assert huge == b""  # not a scraper: closed without an answer
    assert cut == b""
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head.endswith(b"\r\n\r\n")  # the head only
    assert "dashkanban_frames_total 0.0" in body.splitlines()


def test_a_busy_port_is_a_config_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = MetricsServer(Metrics(), port)
        with pytest.raises(ConfigError) as info:
            asyncio.run(server.open())
    assert info.value.exit_code == 2
    assert str(info.value) == (
        f"[metrics] port = {port}: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "pick a free port"
    )


def test_reporting_on_the_loop_serves_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """As the daemon's TaskGroup runs it: open (exit 2 if busy), run, cancel at the end."""
    caplog.set_level(logging.INFO, logger="dashkanban.metrics")
    metrics = Metrics()
    metrics.add("queued", 2)
    reporting = MetricsReporting(MetricsSettings(port=0, log_interval=300), metrics, lambda: 2)

    async def main() -> tuple[int, str]:
        await reporting.open()
        assert reporting.server is not None
        port = reporting.server.port
        task = asyncio.create_task(reporting.run())
        _, body = await scrape(port)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return port, body

    port, body = asyncio.run(main())
    assert "dashkanban_queued_total 2.0" in body.splitlines()
    assert [r.getMessage() for r in caplog.records] == [
        f"metrics on http://127.0.0.1:{port}/metrics",
        "counters: frames=0 candidates=0 malformed=0 presses=0 queued=2 delivered=0 "
        "reconnects=0 refused=0 quarantined=0 c8y_refused=0 outbox=2",
    ]


def test_a_prometheus_scraper_gets_openmetrics_gzipped_as_it_asks() -> None:
    """Prometheus asks for OpenMetrics and gzip; the negotiation is prometheus-client's own."""
    metrics = Metrics()
    metrics.add("presses", 7)
    server = MetricsServer(metrics, 0)

    def fetch() -> tuple[str, str | None, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", headers={
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            "Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return (response.headers["Content-Type"], response.headers["Content-Encoding"],
                    response.read())

    async def check() -> tuple[str, str | None, bytes]:
        return await asyncio.to_thread(fetch)

    content_type, encoding, body = serving(server, check)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert encoding == "gzip"
    text = gzip.decompress(body).decode().splitlines()
    assert "dashkanban_presses_total 7.0" in text
    assert text[-1] == "# EOF"


def test_a_stuck_outbox_writer_leaves_the_lost_presses_scrapable(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread hangs (a hung disk): the row count never comes, yet a scrape answers
    within ROWS_WAIT without the `outbox` value, and shows the presses the press queue lost;
    so does the summary line (no `outbox=`)."""
    from dashkanban import metrics as module
    from dashkanban.outbox.writer import Writer

    monkeypatch.setattr(module, "ROWS_WAIT", 0.2)
    stuck, release = threading.Event(), threading.Event()
    writer = Writer("stuck-test")

    def hung_count() -> int:
        stuck.set()
        release.wait(10)
        return 0

    counted = Metrics()
    counted.press_lost()
    counted.press_lost()
    server = MetricsServer(counted, 0, outbox_rows=lambda: writer.call(hung_count))

    async def check() -> tuple[str, str]:
        _, body = await scrape(server.port)
        return body, summary_line(counted.snapshot(), await module.read_rows(
            lambda: writer.call(hung_count)))

    try:
        body, line = serving(server, check)
    finally:
        release.set()
        writer.close()
    assert stuck.is_set()
    assert "dashkanban_presses_lost_total 2.0" in body.splitlines()
    assert "dashkanban_outbox_events" not in body
    assert line.endswith(" c8y_refused=0 presses_lost=2")


def test_a_stuck_writer_gets_one_row_count_however_often_it_is_asked(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread hangs on the outbox count: three scrapes and three summary lines, each
    giving up after ROWS_WAIT, queue no further count behind it (each would wait there for as
    long as the writer hangs); they wait on the one pending. Once the writer is free, a scrape
    shows the count again."""
    from dashkanban import metrics as module
    from dashkanban.outbox.writer import Writer

    monkeypatch.setattr(module, "ROWS_WAIT", 0.2)
    release = threading.Event()
    writer = Writer("stuck-test")
    asked: list[int] = []

    def count() -> int:
        release.wait(10)
        return 7

    def outbox_rows() -> Awaitable[int]:
        asked.append(1)
        return writer.call(count)

    reporting = MetricsReporting(MetricsSettings(port=0, log_interval=300), Metrics(),
                                 outbox_rows)

    async def main() -> tuple[list[str], int, int, str]:
        await reporting.open()
        assert reporting.server is not None
        port = reporting.server.port
        task = asyncio.create_task(reporting.run())
        bodies = []
        for _ in range(3):
            bodies.append((await scrape(port))[1])
            await reporting.summary.log_now()
        executor = writer._executor
        assert executor is not None
        queued, asked_stuck = executor._work_queue.qsize(), len(asked)
        release.set()
        body = ""
        for _ in range(100):  # bounded: the count's answer reaches the loop
            body = (await scrape(port))[1]
            if "dashkanban_outbox_events 7.0" in body.splitlines():
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return bodies, queued, asked_stuck, body

    try:
        bodies, queued, asked_stuck, body = asyncio.run(main())
    finally:
        release.set()
        writer.close()
    assert all("dashkanban_outbox_events" not in b for b in bodies)
    assert asked_stuck == 1  # one count for six readings
    assert queued == 0  # nothing waits behind the stuck count
    assert "dashkanban_outbox_events 7.0" in body.splitlines()
