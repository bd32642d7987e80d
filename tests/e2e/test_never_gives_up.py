"""Issue 11: `run` never gives up and never goes silent, proven against the sandbox.

A daemon whose logins are refused (each CONNACK code 1 to 5, and TLS handshakes closed unanswered)
for more than three attempts is still running, and delivers every queued press, in press order,
within `retry_max` + 10 s of the tenant accepting it again, without a restart. A password fixed
on the tenant while the daemon runs is picked up the same way, and a broker gone for a minute in
the middle of a burst loses nothing. An unexpected failure of a long-lived part ends `run` with
exit 1 instead of a daemon that lives on without it.

Every daemon here has `[C8YMQTT] retry_max = 1`, so that its backoff is short.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from dashkanban.health import read_state, state_path
from dashkanban.sandbox import Sandbox, SandboxOptions
from tests.brokers import TlsFiles
from tests.c8y.support import break_row_publishes
from tests.e2e.faultkit import (
    ChildDaemon,
    RunningDaemon,
    button,
    buttons_csv,
    presses,
    queued_serials,
    wait_until,
)
from tests.sandbox_fixture import SANDBOX_PASSWORD, sandbox_config, sandbox_options

RETRY_MAX = 1
REFUSALS = 5  # more than three attempts: the old uplink gave up after three


def texts(count: int, start: int = 0) -> list[str]:
    return [f"{button(i).name} pressed ({button(i).mac})" for i in range(start, count)]


def delivered(sandbox: Sandbox) -> list[str]:
    """Event texts in the order the sandbox stored them, duplicates kept."""
    return [e["text"] for e in sandbox.events()]


def with_retry_max(config: Path, retry_max: int = RETRY_MAX) -> Path:
    config.write_text(config.read_text().replace(
        "[gateway]", f"retry_max = {retry_max}\n\n[gateway]", 1))
    return config


def plain_config(tmp_path: Path, sandbox: Sandbox, buttons: int = 10) -> Path:
    csv = buttons_csv(tmp_path / "MACID.csv", buttons)
    return with_retry_max(sandbox_config(tmp_path, sandbox, csv))


def tls_config(tmp_path: Path, sandbox: Sandbox, tls: TlsFiles, buttons: int = 10) -> Path:
    config = plain_config(tmp_path, sandbox, buttons)
    text = config.read_text()
    text = text.replace("tenant = 127.0.0.1", "tenant = localhost")
    text = text.replace(f"port = {sandbox.mqtt_port}", f"port = {sandbox.mqtts_port}")
    text = text.replace("tls = no\nallow_insecure = yes\n", f"ca_file = {tls.ca_cert}\n")
    config.write_text(text)
    return config


def first_link(outbox: Path) -> dict[str, object]:
    """The gateway connection's state as the daemon wrote it for `outbox status`."""
    state = read_state(outbox) or {}
    links = state.get("links") or [{}]
    return dict(links[0])


def refused_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "login refused since" in r.getMessage()]


def again_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "connected again after" in r.getMessage()]


MEANINGS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


@pytest.mark.parametrize("code", [1, 2, 3, 4, 5])
def test_refused_logins_of_each_code_then_accepted_deliver_every_queued_press(
    tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    caplog.set_level(logging.INFO)
    sandbox.refuse_logins(REFUSALS, code)
    run = RunningDaemon.from_config(plain_config(tmp_path, sandbox))
    try:
        run.press(presses(0, 3))
        wait_until(lambda: sandbox.logins_to_refuse() == 0, 60, "every refusal to be used")
        assert run.result == []  # still running: it did not give up
        wait_until(lambda: len(sandbox.events()) >= 3, RETRY_MAX + 10, "3 events in Cumulocity")
        assert delivered(sandbox) == texts(3)
        wait_until(lambda: queued_serials(tmp_path / "state" / "outbox.sqlite3") == [],
                   what="the outbox to empty")
        run.press(presses(3, 4))  # and it goes on as if nothing happened
        wait_until(lambda: len(sandbox.events()) >= 4, 10, "the press after")
        assert delivered(sandbox) == texts(4)
    finally:
        assert run.stop() == 0
    assert sandbox.stats()["refused"] == REFUSALS
    if code == 3:
        # Server unavailable is the platform asking to come back later, not a refusal: retried
        # like a lost connection, and not counted as a refused login.
        assert refused_lines(caplog) == []
    else:
        # Said once when it starts, not at every attempt.
        lines = refused_lines(caplog)
        assert len(lines) == 1, lines
        assert re.fullmatch(
            rf"login refused since \d\d:\d\d \({re.escape(MEANINGS[code])}, CONNACK {code}\); "
            rf"retrying every {RETRY_MAX} s; .+", lines[0]), lines[0]
    assert len(again_lines(caplog)) == 1
    assert re.fullmatch(r"connected again after \d+ s; 3 queued events delivered",
                        again_lines(caplog)[0]), again_lines(caplog)
    assert SANDBOX_PASSWORD not in caplog.text


def test_tls_handshakes_closed_unanswered_then_served_deliver_every_queued_press(
    tmp_path: Path, sandbox_tls: Sandbox, tls_files: TlsFiles, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    sandbox_tls.close_tls_handshakes(REFUSALS)
    run = RunningDaemon.from_config(tls_config(tmp_path, sandbox_tls, tls_files))
    try:
        run.press(presses(0, 3))
        wait_until(lambda: sandbox_tls.tls_handshakes_to_close() == 0, 60,
                   "every handshake to be closed")
        assert run.result == []
        wait_until(lambda: len(sandbox_tls.events()) >= 3, RETRY_MAX + 10,
                   "3 events in Cumulocity")
        assert delivered(sandbox_tls) == texts(3)
    finally:
        assert run.stop() == 0
    assert sandbox_tls.stats()["tls_closed"] == REFUSALS
    assert "giving up" not in caplog.text
    assert re.fullmatch(r"connected again after \d+ s; 3 queued events delivered",
                        again_lines(caplog)[0]), again_lines(caplog)


def test_a_password_fixed_while_the_daemon_runs_is_picked_up_without_a_restart(
    tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sandbox.set_password("the-tenant-has-another-one")  # the config's password is wrong
    run = RunningDaemon.from_config(plain_config(tmp_path, sandbox))
    try:
        run.press(presses(0, 2))
        wait_until(lambda: sandbox.stats().get("refused", 0) > 3, 60, "more than three refusals")
        assert run.result == []
        assert sandbox.events() == []
        assert run.daemon.uplink is not None
        assert not run.daemon.uplink.connected
        # What `outbox status` reads meanwhile (the file the daemon keeps next to the outbox).
        outbox = tmp_path / "state" / "outbox.sqlite3"
        wait_until(lambda: first_link(outbox).get("state") == "refused", 10,
                   "the state file to say refused")
        link = first_link(outbox)
        assert (link["client_id"], link["reason"]) == (
            "dashkanban-gw-01", "bad user name or password, CONNACK 4")
        assert link["attempts"] >= 1
        assert link["refusals"] >= 1
        assert SANDBOX_PASSWORD not in state_path(outbox).read_text()
        sandbox.set_password(SANDBOX_PASSWORD)  # fixed on the tenant
        wait_until(lambda: len(sandbox.events()) >= 2, RETRY_MAX + 10, "2 events")
        assert delivered(sandbox) == texts(2)
        wait_until(lambda: first_link(outbox).get("state") == "connected", 10,
                   "the state file to say connected")
    finally:
        assert run.stop() == 0
    lines = refused_lines(caplog)
    assert len(lines) == 1
    assert "(bad user name or password, CONNACK 4)" in lines[0]
    assert SANDBOX_PASSWORD not in caplog.text
    assert "the-tenant-has-another-one" not in caplog.text


def test_a_broker_gone_for_a_minute_mid_burst_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data = tmp_path / "tenant.json"
    first = Sandbox(sandbox_options(data_file=data)).start()
    mqtt_port, http_port = first.mqtt_port, first.http_port
    run = RunningDaemon.from_config(plain_config(tmp_path, first, buttons=200))
    try:
        run.press(presses(0, 100))
        wait_until(lambda: len(first.events()) >= 20, 30, "the burst to be under way")
        first.stop()  # killed mid-burst: the rest is queued
        run.press(presses(100, 200))
        time.sleep(60.0)  # the outage the issue asks for; the daemon retries every <= 1 s
        assert run.result == []
        options: SandboxOptions = sandbox_options(data_file=data, mqtt_port=mqtt_port,
                                                  http_port=http_port)
        with Sandbox(options) as second:
            wait_until(lambda: len(set(delivered(second))) >= 200, RETRY_MAX + 30,
                       "all 200 presses")
            got = delivered(second)
            wait_until(lambda: queued_serials(tmp_path / "state" / "outbox.sqlite3") == [],
                       what="the outbox to empty")
    finally:
        assert run.stop() == 0
    # At least once, in press order: first arrivals are the presses in order, and a press seen
    # twice is one whose PUBACK was lost when the broker went away.
    firsts = list(dict.fromkeys(got))
    assert firsts == texts(200)
    assert len(got) - len(firsts) <= 100  # duplicates only of the in-flight window
    assert "giving up" not in caplog.text


# -- a task that fails unexpectedly ends the process -------------------------------------------


def test_an_unexpected_failure_in_the_delivery_loop_ends_run_with_exit_1(
    tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dashkanban.c8y.mqtt import Uplink

    caplog.set_level(logging.INFO)
    run = RunningDaemon.from_config(plain_config(tmp_path, sandbox))
    wait_until(lambda: run.daemon.uplink is not None and run.daemon.uplink.connected,
               10, "the uplink")

    # In what the delivery loop does with every row, fresh or read from the outbox (a fresh
    # press goes without a read since issue 11, so the bug is no longer injected into `peek`).
    def broken(self: Uplink, *args: object, **kwargs: object) -> object:
        raise RuntimeError("injected: a bug in sending a row")

    monkeypatch.setattr(Uplink, "send", broken)
    run.press(presses(0, 1))
    run._thread.join(15)
    assert not run._thread.is_alive(), "the daemon lived on without its delivery loop"
    assert run.result == [1]
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert [r.getMessage() for r in critical] == [
        "the delivery loop failed unexpectedly; exiting so that the service is restarted"]
    assert critical[0].exc_info is not None
    assert "injected: a bug in sending a row" in caplog.text  # the traceback, once
    assert caplog.text.count("RuntimeError: injected") == 1
    # The press is not lost: it waits in the outbox for the restarted service.
    assert queued_serials(tmp_path / "state" / "outbox.sqlite3") == [button(0).serial]


def test_a_bug_in_the_publish_of_a_row_ends_run_with_exit_1_and_is_not_resent(
    tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PUBLISH task that fails with a bug (not a connection error) reaches the supervisor as
    itself: it is not taken for a lost connection, whose row would be sent again for ever with
    the bug never seen."""

    caplog.set_level(logging.INFO)
    run = RunningDaemon.from_config(plain_config(tmp_path, sandbox))
    wait_until(lambda: run.daemon.uplink is not None and run.daemon.uplink.connected,
               10, "the uplink")

    break_row_publishes(monkeypatch, TypeError("injected: a bug in a PUBLISH"))
    run.press(presses(0, 1))
    run._thread.join(15)
    assert not run._thread.is_alive(), "the daemon lived on, sending the row again for ever"
    assert run.result == [1]
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert [r.getMessage() for r in critical] == [
        "the delivery loop failed unexpectedly; exiting so that the service is restarted"]
    assert critical[0].exc_info is not None
    assert caplog.text.count("TypeError: injected: a bug in a PUBLISH") == 1
    assert "connection lost before PUBACK" not in caplog.text
    assert "lost in flight" not in caplog.text
    assert sandbox.events() == []
    assert queued_serials(tmp_path / "state" / "outbox.sqlite3") == [button(0).serial]


def test_an_unexpected_failure_in_the_capture_ends_run_with_exit_1(
    tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    run = RunningDaemon.from_config(plain_config(tmp_path, sandbox))
    run.press(presses(0, 1))
    wait_until(lambda: len(sandbox.events()) == 1, 10, "the first press")

    def explode() -> None:
        raise RuntimeError("injected: a bug in the capture")

    run.source.on_frame.append(explode)
    run.press(presses(1, 2))
    run._thread.join(15)
    assert not run._thread.is_alive(), "the daemon lived on without its capture"
    assert run.result == [1]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL] == [
        "the capture failed unexpectedly; exiting so that the service is restarted"]
    assert caplog.text.count("RuntimeError: injected") == 1
    # The press handled just before the failure is not lost: delivered, or waiting in the
    # outbox for the restarted service (or both, when its PUBACK came too late to count).
    queued = queued_serials(tmp_path / "state" / "outbox.sqlite3")
    assert queued in ([], [button(1).serial])
    assert delivered(sandbox) == (texts(1) if queued else texts(2)) or (
        queued and delivered(sandbox) == texts(2))


@pytest.mark.parametrize(("failure", "part"), [("courier", "the delivery loop"),
                                               ("capture", "the capture")])
def test_an_unexpected_failure_ends_the_process_with_exit_1_within_seconds(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, failure: str, part: str,
) -> None:
    """The same as the two tests above, for a whole process (`Daemon.run` as `dashkanban run`
    wires it, with its signal handlers): the process ends by itself, exit 1, instead of living
    on without the part; the press waits in the outbox for the restarted service or was
    delivered."""
    monkeypatch.setenv("DASHKANBAN_CHILD_FAILURE", failure)
    child = ChildDaemon(plain_config(tmp_path, sandbox), tmp_path / "daemon.log")
    try:
        child.wait_log("dashkanban-gw-01 ready")
        child.press(presses(0, 1))
        code = child.finish(15)  # raises TimeoutExpired if it lived on
    finally:
        if child.process.poll() is None:
            child.kill()
    assert code == 1
    log = child.log_text()
    assert log.count(f"CRITICAL dashkanban.commands.run: {part} failed unexpectedly; exiting so "
                     "that the service is restarted") == 1
    assert log.count("RuntimeError: injected") == 1  # the traceback, once
    assert f"dashkanban stopped: {part} failed" in log
    queued = queued_serials(tmp_path / "state" / "outbox.sqlite3")
    if failure == "courier":
        assert queued == [button(0).serial]
        assert sandbox.events() == []
    else:
        # Waiting in the outbox, or delivered, or both (its PUBACK came as the process ended).
        assert queued in ([], [button(0).serial])
        assert delivered(sandbox) in ([], texts(1))
        assert queued or delivered(sandbox)


# -- systemd sees it: READY=1, WATCHDOG=1, STOPPING=1 on $NOTIFY_SOCKET ---------------------------


def test_the_daemon_notifies_systemd_ready_watchdog_and_stopping(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        systemd.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")  # WatchdogSec=0.2: a ping every 0.1 s
        run = RunningDaemon.from_config(plain_config(tmp_path, sandbox))
        try:
            assert systemd.recv(64) == b"READY=1"  # capture and outbox open
            wait_until(lambda: run.daemon.uplink is not None and run.daemon.uplink.connected,
                       10, "the uplink")
            assert [systemd.recv(64) for _ in range(3)] == [b"WATCHDOG=1"] * 3
        finally:
            assert run.stop() == 0
        got = []
        systemd.settimeout(0.5)
        try:
            while True:  # bounded: the daemon has stopped, the socket drains
                got.append(systemd.recv(64))
        except TimeoutError:
            pass
        # One STOPPING=1; a watchdog ping already under way may still follow it.
        assert got.count(b"STOPPING=1") == 1
        assert set(got) == {b"STOPPING=1", b"WATCHDOG=1"} or got == [b"STOPPING=1"]
