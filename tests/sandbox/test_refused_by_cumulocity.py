"""Issue 13, hole 1: a line Cumulocity accepts (PUBACK) and then refuses on `s/e` is never silent.

The refusal is real: a `400` without text is refused with `45,400,Wrong number of arguments`
(type and text are mandatory, mqtt-static-templates.md 400; the sandbox's rule in
docs/sandbox.md). `[event] text` can no longer render empty (refused at load), so the refused
presses are rows an older dashkanban queued when it let `[event] text = {bin}` render empty for
a button without a bin: the outbox of an upgraded gateway can hold such rows. The ERROR line
names the line, its outbox row and press; the outbox file counts it (`outbox status`), the
metrics too, and a one-shot command says how many were refused and exits 1.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dashkanban.capture import Frame
from dashkanban.cli import main
from dashkanban.commands.run import Daemon
from dashkanban.config import load_settings
from dashkanban.detect.events import Event
from dashkanban.outbox.store import Outbox, press_key
from dashkanban.sandbox import Sandbox
from tests import forge
from tests.brokers import free_port
from tests.sandbox.test_inventory_daemon import OpenSource, wait_until
from tests.sandbox_fixture import rest, sandbox_config
from tests.test_replay import SAMPLE

GATEWAY = "dashkanban-gw-01"
# The sample capture's three buttons; dashButton_2 has no bin.
MACID = (
    "Name, MAC-Address, dead_time, bin\n"
    "dashButton_1, ac:63:be:12:34:56, , A3\n"
    "dashButton_2, FC-A6-67-0A-0B-0C, ,\n"
    "dashButton_3, 6854.fd01.0203, 20, C7\n"
)
B2 = "dashButton_2 (fc:a6:67:0a:0b:0c)"
B1_MAC, B2_MAC = "ac:63:be:12:34:56", "fc:a6:67:0a:0b:0c"
ERROR_LOG = re.compile(r"\S+ \S+ ERROR +dashkanban\.c8y\.link: (.*)")


def refused_line(row: int, time: str) -> str:
    return (f"Cumulocity refused 400,c8y_MAC_Event,,{time} on s/us/fca6670a0b0c (outbox row "
            f"{row}, {B2} pressed at {time}): error 45 (invalid arguments): Wrong number of "
            "arguments; not sent again")


def make_config(tmp_path: Path, sandbox: Sandbox) -> Path:
    buttons = tmp_path / "MACID.csv"
    buttons.write_text(MACID, encoding="utf-8")
    return sandbox_config(tmp_path, sandbox, buttons, outbox=tmp_path / "outbox.sqlite3",
                          gateway=GATEWAY, extra="[event]\ntext = {name}\n")


def queue_without_text(tmp_path: Path, *times: datetime) -> None:
    """dashButton_2's presses as an older dashkanban queued them with `[event] text = {bin}`:
    an empty text (and their identity, so a replay of the same presses skips them)."""
    with Outbox.open(tmp_path / "outbox.sqlite3") as outbox:
        for time_ in times:
            event = Event(time=time_, mac=B2_MAC, serial="fca6670a0b0c", name="dashButton_2",
                          type="c8y_MAC_Event", text="", trigger="dhcp")
            outbox.put(event, key=press_key(event))


def events_text(sandbox: Sandbox) -> list[str]:
    with rest(sandbox) as client:
        answer = client.get("/event/events", params={"pageSize": 100, "revert": "true"})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["events"]
    return [e["text"] for e in found if e["type"] == "c8y_MAC_Event"]


def error_lines(err: str) -> list[str]:
    """The messages of the uplink's ERROR log lines in a command's stderr."""
    found = (ERROR_LOG.fullmatch(line) for line in err.splitlines())
    return [match.group(1) for match in found if match is not None]


def test_replay_names_each_refused_line_counts_them_and_exits_1(
        tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path, sandbox)
    queue_without_text(tmp_path, datetime(2026, 11, 26, 8, 5, 12, 500000, tzinfo=UTC),
                       datetime(2026, 11, 26, 8, 45, 30, tzinfo=UTC))
    code = main(["replay", "-c", str(config), str(SAMPLE), "--timeout", "20"])
    err = capsys.readouterr().err
    assert code == 1
    assert error_lines(err) == [
        refused_line(1, "2026-11-26T08:05:12.500+00:00"),
        refused_line(2, "2026-11-26T08:45:30.000+00:00"),
    ]
    assert err.splitlines()[-1] == (
        "error: Cumulocity refused 2 of the 7 events it acknowledged (the ERROR lines above say "
        "which and why; `dashkanban outbox status` counts them); they are not sent again"
    )
    assert "delivered" not in err.splitlines()[-1]
    # Cumulocity (and the sandbox) answer `s/e` after the PUBACK. The press's own line is
    # written once its PUBACK is awaited; when the error came in the same read as the PUBACK it
    # is already known then, and the line says so. Either way one line per press.
    at = f"{B2} pressed at 2026-11-26T08:05:12.500+00:00: "
    outcomes = [line.split(at, 1)[1] for line in err.splitlines() if at in line]
    assert outcomes in (["delivered"], ["acknowledged, but refused by Cumulocity"])
    assert err.count(": delivered\n") + err.count(": acknowledged, but refused by Cumulocity\n") \
        == 7
    # The other five arrived; the two refused did not.
    assert sorted(events_text(sandbox)) == ["dashButton_1"] * 3 + ["dashButton_3"] * 2

    assert main(["outbox", "status", "-c", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("queued: 0 events, ")
    line = next(line for line in out if line.startswith("refused by Cumulocity: "))
    assert re.fullmatch(
        r"refused by Cumulocity: 2 \(last: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00 "
        r"45,400,Wrong number of arguments for "
        r"400,c8y_MAC_Event,,2026-11-26T08:45:30\.000\+00:00\)", line), line


def test_test_button_that_delivers_a_refused_row_exits_1_and_the_count_adds_up(
        tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    """`test-button` delivers the whole outbox: a row queued before it that Cumulocity refuses
    makes it exit 1, though its own press arrived."""
    config = make_config(tmp_path, sandbox)
    assert main(["test-button", "-c", str(config), "dashButton_1"]) == 0
    capsys.readouterr()
    for attempt in (1, 2):
        pressed = datetime(2026, 11, 26, 8, 5, attempt, tzinfo=UTC)
        queue_without_text(tmp_path, pressed)
        assert main(["test-button", "-c", str(config), "dashButton_1"]) == 1
        out, err = capsys.readouterr()
        assert out == ""  # no "acknowledged" tick when Cumulocity refused what it delivered
        assert error_lines(err) == [refused_line(2 * attempt, pressed.isoformat(
            timespec="milliseconds"))]
        assert err.splitlines()[-1] == (
            "error: Cumulocity refused 1 of the 2 events it acknowledged (the ERROR lines above "
            "say which and why; `dashkanban outbox status` counts them); they are not sent again"
        )
        assert main(["outbox", "status", "-c", str(config)]) == 0
        status = capsys.readouterr().out
        assert f"\nrefused by Cumulocity: {attempt} (last: " in status
    assert events_text(sandbox) == ["dashButton_1"] * 3


def test_the_daemon_logs_counts_and_exports_a_refused_press(
        tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`run` (the Daemon, fed frames by the test): the ERROR line, `outbox status` while it
    runs, and the Prometheus counter; the press after it is delivered as usual."""
    port = free_port()
    config = make_config(tmp_path, sandbox)
    config.write_text(config.read_text() + f"\n[metrics]\nport = {port}\n")
    settings = load_settings(config)
    queue_without_text(tmp_path, datetime(2026, 11, 26, 8, 5, 12, 500000, tzinfo=UTC))
    caplog.set_level(logging.INFO)
    source = OpenSource()
    delivered: list[Event] = []
    daemon = Daemon(settings, source, drain_on_stop=5.0, on_delivered=delivered.append)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: daemon.uplink is not None and daemon.uplink.connected, "the uplink")
        wait_until(lambda: len(delivered) == 1, "the refused row acknowledged")
        source.put(Frame(time.time(), forge.dhcp_client_frame(B1_MAC, forge.DISCOVER)))
        wait_until(lambda: len(delivered) == 2, "the next press acknowledged")
        wait_until(lambda: "dashkanban_c8y_refused_total 1.0" in scrape(port),
                   "the metrics to count the refusal")
        assert main(["outbox", "status", "-c", str(config)]) == 0
        status = capsys.readouterr().out
    finally:
        daemon.stop()
        runner.join(timeout=20)
    assert not runner.is_alive()
    time_of = delivered[0].c8y_time
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [refused_line(1, time_of)]
    [line] = [line for line in status.splitlines() if "by Cumulocity" in line]
    assert line.startswith("refused by Cumulocity: 1 (last: ")
    assert line.endswith(f" 45,400,Wrong number of arguments for 400,c8y_MAC_Event,,{time_of})")
    assert events_text(sandbox) == ["dashButton_1"]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def test_outbox_flush_of_a_queued_row_cumulocity_refuses_exits_1(
        tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    """A row queued earlier (by `run`, or an older version) that Cumulocity refuses."""
    config = make_config(tmp_path, sandbox)
    queue_without_text(tmp_path, datetime(2026, 11, 26, 8, 5, 12, 500000, tzinfo=UTC))
    assert main(["outbox", "flush", "-c", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""  # not "outbox: delivered 1 event"
    assert error_lines(err) == [refused_line(1, "2026-11-26T08:05:12.500+00:00")]
    assert err.splitlines()[-1] == (
        "error: Cumulocity refused 1 of the 1 event it acknowledged (the ERROR lines above say "
        "which and why; `dashkanban outbox status` counts them); they are not sent again"
    )
    with Outbox.open(tmp_path / "outbox.sqlite3") as outbox:
        assert (outbox.count(), outbox.c8y_refusals()[0]) == (0, 1)
