"""Health you can see (issue 11, item 4): the uplink state file next to the outbox, what
`outbox status` makes of it, and systemd's notify protocol over a real unix datagram socket."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

from dashkanban.c8y.mqtt import LinkHealth
from dashkanban.cli import main
from dashkanban.health import (
    StateFile,
    duration,
    notify,
    read_state,
    state_path,
    status_lines,
    watchdog_interval,
)
from dashkanban.outbox.store import delivery_lock
from tests.e2e.faultkit import T0

REFUSAL = ("127.0.0.1:8883 refused the login for t12345/dash-gateway: bad user name or "
           "password (CONNACK 4); check user and password in [C8YMQTT]")


def refused(now: float = T0) -> LinkHealth:
    return LinkHealth("dashkanban-gw-01", "refused", now - 600, 7, 7, REFUSAL, now + 42,
                      "bad user name or password, CONNACK 4")


def local(epoch: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def test_the_state_file_is_replaced_atomically_with_mode_0600_and_no_secret(
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    path = state_path(outbox)
    assert path == tmp_path / "outbox.sqlite3.uplink.json"
    path.write_text("{}")
    path.chmod(0o666)  # a loose old file: its mode is not kept
    StateFile(outbox).write([refused()])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    data = json.loads(path.read_text())
    assert data["format"] == 1
    assert data["pid"] == os.getpid()
    assert data["running"] is True
    assert data["links"] == [{
        "client_id": "dashkanban-gw-01", "state": "refused", "since": T0 - 600, "attempts": 7,
        "refusals": 7, "last_error": REFUSAL, "retry_at": T0 + 42,
        "reason": "bad user name or password, CONNACK 4",
    }]
    assert read_state(outbox) == data


def test_an_unwritable_folder_is_logged_once_not_raised(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    state = StateFile(tmp_path / "missing" / "outbox.sqlite3")
    state.write([refused()])
    state.write([refused()])
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"cannot write the uplink state to {state.path}: No such file or "
                        "directory"]


def test_status_lines_say_refused_since_with_the_reason_retrying_in_and_attempts() -> None:
    state: dict[str, object] = {"format": 1, "running": True, "written": T0,
                                "links": [asdict(refused())]}
    assert status_lines(state, running=True, now=T0) == [
        f"uplink dashkanban-gw-01: login refused since {local(T0 - 600)} (bad user name or "
        "password, CONNACK 4), retrying in 42 s, 7 failed attempts, 7 refused logins since start",
        f"uplink last error: {REFUSAL}",
    ]
    connected = LinkHealth("dashkanban-gw-01", "connected", T0 - 60, 0, 7, None, None)
    state["links"] = [asdict(connected)]
    assert status_lines(state, running=True, now=T0) == [
        f"uplink dashkanban-gw-01: connected since {local(T0 - 60)}, 7 refused logins since "
        "start",
    ]
    assert status_lines(state, running=False, now=T0) == [
        f"uplink: dashkanban run is not running (last state written {local(T0)})"]
    assert status_lines(None, running=True) == []
    state["links"] = []
    assert status_lines(state, running=True, now=T0) == [
        "uplink: no connection yet (per-device mode connects a button when it is first pressed)"]


def test_outbox_status_shows_the_uplink_of_the_running_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_outbox import _config, open_outbox

    path = tmp_path / "state" / "outbox.sqlite3"
    config = _config(tmp_path, path)
    with open_outbox(path):
        pass
    assert main(["outbox", "status", "-c", str(config)]) == 0
    assert "uplink" not in capsys.readouterr().out  # no service ever ran: nothing to say
    StateFile(path).write([refused(T0)])
    with delivery_lock(path, wait=False) as ours:  # as `dashkanban run` holds it
        assert ours
        assert main(["outbox", "status", "-c", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith(f"uplink dashkanban-gw-01: login refused since {local(T0 - 600)} "
                              "(bad user name or password, CONNACK 4), retrying in 0 s, "
                              "7 failed attempts")
    assert out[-1] == f"uplink last error: {REFUSAL}"
    assert main(["outbox", "status", "-c", str(config)]) == 0  # the lock is free: not running
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "uplink: dashkanban run is not running (last state written ")


@pytest.mark.parametrize(("seconds", "text"), [
    (0.4, "0 s"), (41, "41 s"), (60, "1 min"), (41 * 60 + 5, "41 min"), (3600, "1 h"),
    (3 * 3600 + 5 * 60, "3 h 5 min"),
])
def test_durations_in_words(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_notify_sends_one_datagram_to_notify_socket(tmp_path: Path) -> None:
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        systemd.settimeout(5)
        assert notify("READY=1", {"NOTIFY_SOCKET": address}) is True
        assert systemd.recv(4096) == b"READY=1"
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": address}) is True
        assert systemd.recv(4096) == b"WATCHDOG=1"


def test_notify_to_an_abstract_socket() -> None:
    name = f"dashkanban-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        systemd.settimeout(5)
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert systemd.recv(4096) == b"READY=1"


def test_notify_without_systemd_or_with_its_socket_gone_is_false(tmp_path: Path) -> None:
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "relative/path"}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) \
        == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_a_later_state_is_never_overwritten_by_an_earlier_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon takes each state on its loop (`snapshot`) and writes it on a thread
    (`flush`). A flush that hangs in a slow fsync while two newer states are taken, and flushes
    that come after the newest is in the file, never put an older state back."""
    from dashkanban import health

    outbox = tmp_path / "outbox.sqlite3"
    state = StateFile(outbox)
    first_entered, let_go = threading.Event(), threading.Event()
    files: list[str] = []
    real_write = health.write_atomic

    def slow_write(path: Path, data: bytes, mode: int) -> None:
        if not files:  # the first write hangs, as an fsync on a dying SD card would
            first_entered.set()
            assert let_go.wait(10)
        real_write(path, data, mode)
        files.append(json.loads(data)["links"][0]["state"])

    monkeypatch.setattr(health, "write_atomic", slow_write)
    connected = LinkHealth("dashkanban-gw-01", "connected", T0, 0, 0, None, None, None)
    unreachable = LinkHealth("dashkanban-gw-01", "unreachable", T0 + 5, 1, 0, "reset", T0 + 6,
                             None)
    state.snapshot([refused()])
    hung = threading.Thread(target=state.flush)
    hung.start()
    assert first_entered.wait(10)
    state.snapshot([connected])
    state.snapshot([unreachable])
    late = threading.Thread(target=state.flush)  # waits for the hung one, then the newest
    late.start()
    let_go.set()
    hung.join(10)
    late.join(10)
    state.flush()  # nothing newer: not written again
    assert files == ["refused", "unreachable"]
    written = read_state(outbox)
    assert written is not None
    assert written["links"][0]["state"] == "unreachable"


def test_status_shows_the_presses_a_full_press_queue_lost(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    connected = LinkHealth("dashkanban-gw-01", "connected", T0 - 60, 0, 0, None, None, None)
    StateFile(outbox).write([connected], presses_lost=2)
    state = read_state(outbox)
    assert status_lines(state, running=True, now=T0) == [
        f"uplink dashkanban-gw-01: connected since {local(T0 - 60)}",
        "presses lost: 2 (the press queue was full: the outbox writer was stuck; see the log)",
    ]
    assert status_lines(state, running=False, now=T0)[1:] == [
        "presses lost: 2 (the press queue was full: the outbox writer was stuck; see the log)"]
    StateFile(outbox).write([connected])
    assert "presses_lost" not in (read_state(outbox) or {})
