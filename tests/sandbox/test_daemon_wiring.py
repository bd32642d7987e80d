"""What `dashkanban run` wires in besides capture and delivery, against the sandbox: a live press
is remembered so a replay of the same capture skips it (issue 14), the stop line counts in
English (issue 14), and the overdue check runs on a timer with the wall clock (issue 18)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dashkanban.capture import Frame
from dashkanban.cli import main
from dashkanban.commands.run import Daemon
from dashkanban.compose import load_buttons
from dashkanban.config import load_settings
from dashkanban.kanban.history import History
from dashkanban.outbox.store import Outbox
from dashkanban.sandbox import Sandbox
from tests import forge
from tests.brokers import free_port
from tests.sandbox_fixture import rest, sandbox_config

BUTTON = "ac:63:be:12:34:56"
SERIAL = "ac63be123456"
T0 = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC).timestamp()
WAIT = 10.0


class OpenSource:
    """A frame source that stays open until stopped, fed by the test with its own times."""

    def __init__(self) -> None:
        self._frames: queue.Queue[Frame | None] = queue.Queue()

    def put(self, stamp: float, data: bytes) -> None:
        self._frames.put(Frame(stamp, data))

    def frames(self) -> Iterator[Frame]:
        while (frame := self._frames.get()) is not None:
            yield frame

    def stop(self) -> None:
        self._frames.put(None)


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def events_in(sandbox: Sandbox) -> list[str]:
    return [m.payload for m in sandbox.messages()
            if m.direction == "in" and m.payload.startswith("400,")]


class Running:
    """`Daemon.run()` on a thread; `finish()` stops it and returns its exit code."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.code: list[int] = []
        self.thread = threading.Thread(target=lambda: self.code.append(daemon.run()),
                                       daemon=True)
        self.thread.start()

    def finish(self) -> int:
        self.daemon.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()
        return self.code[0]


def test_a_live_press_is_remembered_and_a_replay_of_it_skips_it(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "MACID.csv").write_text(f"Name, MAC-Address\nscrews, {BUTTON}\n")
    config = sandbox_config(tmp_path, sandbox, tmp_path / "MACID.csv")
    frame = forge.dhcp_client_frame(BUTTON, forge.DISCOVER)
    source = OpenSource()
    running = Running(Daemon(load_settings(config), source))
    try:
        source.put(T0, frame)
        wait_until(lambda: len(events_in(sandbox)) == 1, "the live press")
    finally:
        assert running.finish() == 0
    expected = f"400,c8y_MAC_Event,screws pressed ({BUTTON}),2026-11-26T08:00:01.234+00:00"
    assert events_in(sandbox) == [expected]

    # The same press in a capture file (tcpdump ran beside the daemon): skipped, not resent.
    capture = tmp_path / "store.pcap"
    with capture.open("wb") as out:
        forge.write_pcap(out, [(T0, frame)])
    assert main(["replay", "-c", str(config), str(capture), "--timeout", "10"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines()
            if not line.startswith("20")]  # the sandbox's own log lines start with the date
    assert said[-2:] == ["1 press, 1 already delivered: skipped (--again queues them once more)",
                         "delivered 0 events to 127.0.0.1"]
    assert events_in(sandbox) == [expected]


def test_stopping_with_one_event_queued_says_1_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Cumulocity unreachable (nothing listens on the port): the press stays queued, and the
    last lines count it in English."""
    caplog.set_level(logging.INFO, logger="dashkanban")
    (tmp_path / "MACID.csv").write_text(f"Name, MAC-Address\nscrews, {BUTTON}\n")
    port = free_port()
    config = tmp_path / "config.ini"
    config.touch(mode=0o600)
    config.write_text(
        "[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = dash-gateway\n"
        f"password = pw-not-used\nport = {port}\ntls = no\nallow_insecure = yes\n\n"
        f"[buttons]\nfile = {tmp_path / 'MACID.csv'}\n\n"
        f"[outbox]\npath = {tmp_path / 'outbox.sqlite3'}\n")
    source = OpenSource()
    daemon = Daemon(load_settings(config), source, drain_on_stop=0.2)
    running = Running(daemon)
    try:
        source.put(T0, forge.dhcp_client_frame(BUTTON, forge.DISCOVER))
        wait_until(lambda: daemon.outbox is not None and daemon.outbox.count() == 1,
                   "the press queued")
    finally:
        assert running.finish() == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "dashkanban.commands.run"]
    assert messages[0] == (f"dashkanban running: 1 button from csv, gateway mode as "
                           f"{load_settings(config).gateway.serial} to 127.0.0.1:{port}, "
                           "0 events queued")
    assert messages[-2:] == ["stopping with 1 event queued; it is sent at the next start",
                             "dashkanban stopped"]
    with Outbox.open(tmp_path / "outbox.sqlite3") as outbox:
        assert outbox.count() == 1


def test_the_registry_run_command_read_is_the_one_matched(
    tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """`run_command` reads MACID.csv once and hands the registry to the Daemon (issue 16: the
    daemon's peak memory): the daemon matches with it and does not read the file for it again,
    so a button written into the file after that read is not matched (until a reload)."""
    caplog.set_level(logging.INFO, logger="dashkanban")
    buttons = tmp_path / "MACID.csv"
    buttons.write_text(f"Name, MAC-Address\nscrews, {BUTTON}\n")
    config = sandbox_config(tmp_path, sandbox, buttons)
    registry = load_buttons(buttons)
    buttons.write_text("Name, MAC-Address\nsync, ac:63:be:00:00:01\n")
    source = OpenSource()
    running = Running(Daemon(load_settings(config), source, registry=registry))
    try:
        source.put(T0, forge.dhcp_client_frame("ac:63:be:00:00:01", forge.DISCOVER))
        source.put(T0 + 1, forge.dhcp_client_frame(BUTTON, forge.DISCOVER))
        wait_until(lambda: len(events_in(sandbox)) == 1, "the press")
    finally:
        assert running.finish() == 0
    assert [m.split(",")[2] for m in events_in(sandbox)] == [f"screws pressed ({BUTTON})"]
    assert "dashkanban running: 1 button from csv" in caplog.text


def test_reload_in_process_swaps_the_matching_and_warns_of_changed_bins(
    tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """`Daemon.reload()` (what SIGHUP calls) on a source without a kernel filter: the matching
    gets the new button; a bin added to the file is for the next restart, and it says so."""
    caplog.set_level(logging.INFO, logger="dashkanban")
    buttons = tmp_path / "MACID.csv"
    buttons.write_text("Name, MAC-Address\nsync, ac:63:be:00:00:01\n")
    config = sandbox_config(tmp_path, sandbox, buttons)
    source = OpenSource()
    daemon = Daemon(load_settings(config), source)
    running = Running(daemon)
    try:
        source.put(T0, forge.dhcp_client_frame(BUTTON, forge.DISCOVER))  # not listed: ignored
        source.put(T0 + 1, forge.dhcp_client_frame("ac:63:be:00:00:01", forge.DISCOVER))
        wait_until(lambda: len(events_in(sandbox)) == 1, "the listed button's press")
        buttons.write_text("Name, MAC-Address, bin, quantity, lead_time_days\n"
                           f"sync, ac:63:be:00:00:01, , ,\nscrews, {BUTTON}, A3, 50, 2\n")
        daemon.reload()
        wait_until(lambda: "reload: 2 buttons" in caplog.text, "the reload")
        source.put(T0 + 2, forge.dhcp_client_frame(BUTTON, forge.DISCOVER))
        wait_until(lambda: len(events_in(sandbox)) == 2, "the new button's press")
    finally:
        assert running.finish() == 0
    assert [m.split(",")[2] for m in events_in(sandbox)] == [
        "sync pressed (ac:63:be:00:00:01)", f"screws pressed ({BUTTON})"]
    said = [(r.levelname, r.getMessage()) for r in caplog.records
            if "reload" in r.getMessage().lower()]
    assert said == [
        ("INFO", f"SIGHUP: reloading {buttons}"),
        ("INFO", f"reload: 2 buttons from {buttons}; the button filter (2 MACs)"),
        ("WARNING", f"reload: the Kanban bins of {buttons} changed; they take effect at the "
                    "next restart (systemctl restart dashkanban)"),
    ]


KANBAN_MACID = (
    "Name, MAC-Address, bin, part, quantity, location, supplier, lead_time_days\n"
    f"screws, {BUTTON}, A3, M6 screws, 50, Aisle 2, Würth, 2\n"
)


def alarms_of(sandbox: Sandbox, serial: str) -> list[tuple[str, str, str, str, int]]:
    source = sandbox.device_id(serial)
    assert source is not None, f"no device {serial}"
    with rest(sandbox) as client:
        answer = client.get("/alarm/alarms", params={"source": source, "pageSize": 100})
    assert answer.status_code == 200, answer.text
    found = answer.json()["alarms"]
    return sorted((a["type"], a["status"], a["severity"], a["text"], a["count"]) for a in found)


def test_the_daemon_raises_one_overdue_alarm_on_its_timer(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A reorder press at T0 and a bin with a 2-day lead time; the daemon's clock (injected)
    reads T0 + 3 days: the timer raises c8y_KanbanOverdue once, however often it checks."""
    (tmp_path / "MACID.csv").write_text(KANBAN_MACID, encoding="utf-8")
    config = sandbox_config(tmp_path, sandbox, tmp_path / "MACID.csv", extra=(
        "[kanban]\nalarms = yes\nseverity = MINOR\nhistory_days = 36500\n"))
    now = datetime.fromtimestamp(T0, UTC) + timedelta(days=3)
    checks: list[datetime] = []

    def clock() -> datetime:
        checks.append(now)
        return now

    source = OpenSource()
    running = Running(Daemon(load_settings(config), source, overdue_every=0.05, clock=clock))
    try:
        source.put(T0, forge.dhcp_client_frame(BUTTON, forge.DISCOVER))
        wait_until(lambda: sandbox.device_id(SERIAL) is not None
                   and len(alarms_of(sandbox, SERIAL)) == 2, "the reorder and overdue alarms")
        seen = len(checks)
        wait_until(lambda: len(checks) >= seen + 10, "ten more checks")
    finally:
        assert running.finish() == 0
    assert alarms_of(sandbox, SERIAL) == [
        ("c8y_KanbanOverdue", "ACTIVE", "CRITICAL",
         "Bin A3 (M6 screws, Würth) overdue by 1 day: reordered 2026-11-26 08:00 UTC, "
         "lead time 2 days", 1),
        ("c8y_KanbanReorder", "ACTIVE", "MINOR", "Reorder 50 x M6 screws for bin A3 (Aisle 2)",
         1),
    ]
    raised = [m.payload for m in sandbox.messages()
              if m.direction == "in" and "c8y_KanbanOverdue" in m.payload]
    assert len(raised) == 1
    assert raised[0].startswith("301,c8y_KanbanOverdue,")
    assert raised[0].endswith(",2026-11-29T08:00:01.234+00:00")  # the check's time: the clock's
    with History.open(tmp_path / "state" / "history.sqlite3", 36500) as history:
        assert history.open_overdue() == {"A3": SERIAL}
