"""The uplink against a real mosquitto over TLS with password auth: exact topics and lines."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashkanban.backoff import Backoff
from dashkanban.c8y import mqtt
from dashkanban.c8y.mqtt import (
    LoginRefusedError,
    MessageTooLargeError,
    Uplink,
    describe_error_line,
)
from dashkanban.c8y.smartrest import SmartRestLine
from dashkanban.config import load_settings
from dashkanban.detect.events import Event
from tests.brokers import Mosquitto, TlsFiles, free_port
from tests.c8y.support import Recorder, break_client_publishes, settings_for
from tests.conftest import _need_mosquitto
from tests.running import RunningUplink

FAST = (0.05, 0.2)  # reconnect backoff for tests

GATEWAY_HELLO = [
    ("s/us", "100,Store 3 button gateway,c8y_DashKanbanGateway"),
    ("s/us", "114,c8y_KanbanRefilled"),
    ("s/us", "117,60"),
    ("s/us", "500"),
]
GATEWAY_HELLO_BARE = [GATEWAY_HELLO[0], ("s/us", "114"), *GATEWAY_HELLO[2:]]


def event(n: int = 1, text: str | None = None) -> Event:
    mac, name = {1: ("ac:63:be:12:34:56", "dashButton_1"),
                 2: ("fc:a6:67:0a:0b:0c", "dashButton_2")}[n]
    return Event(
        time=datetime(2026, 11, 26, 8, 0, n, 234000, tzinfo=UTC),
        mac=mac,
        serial=mac.replace(":", ""),
        name=name,
        type="c8y_MAC_Event",
        text=text if text is not None else f"{name} pressed ({mac})",
        trigger="dhcp",
    )


class Acks:
    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.lost: list[str] = []
        self.cond = threading.Condition()

    def ok(self, label: str) -> None:
        with self.cond:
            self.delivered.append(label)
            self.cond.notify_all()

    def gone(self, label: str) -> None:
        with self.cond:
            self.lost.append(label)
            self.cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[str]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.delivered) >= count, timeout)
            return list(self.delivered)



def send(uplink: Uplink, ev: Event, acks: Acks, label: str) -> None:
    assert uplink.send(ev, on_delivered=lambda: acks.ok(label), on_lost=lambda: acks.gone(label))


def test_gateway_sequence_over_tls(tmp_path: Path, mosquitto_tls: Mosquitto,
                                   recorder: Recorder) -> None:
    settings = settings_for(tmp_path, mosquitto_tls)
    uplink = RunningUplink(settings, supported_operations=["c8y_KanbanRefilled"], backoff=FAST)
    uplink.start()
    try:
        assert uplink.wait_connected(10)
        acks = Acks()
        send(uplink, event(1), acks, "a")
        send(uplink, event(1, text='said "hi", twice'), acks, "b")
        send(uplink, event(2), acks, "c")
        assert acks.wait(3) == ["a", "b", "c"]
        assert recorder.wait_for(9) == [
            *GATEWAY_HELLO,
            ("s/us", "101,ac63be123456,dashButton_1,c8y_DashButton"),
            ("s/us/ac63be123456",
             "400,c8y_MAC_Event,dashButton_1 pressed (ac:63:be:12:34:56),"
             "2026-11-26T08:00:01.234+00:00"),
            ("s/us/ac63be123456",
             '400,c8y_MAC_Event,"said ""hi"", twice",2026-11-26T08:00:01.234+00:00'),
            ("s/us", "101,fca6670a0b0c,dashButton_2,c8y_DashButton"),
            ("s/us/fca6670a0b0c",
             "400,c8y_MAC_Event,dashButton_2 pressed (fc:a6:67:0a:0b:0c),"
             "2026-11-26T08:00:02.234+00:00"),
        ]
        assert uplink.last_error is None
    finally:
        uplink.stop()


def test_reconnect_repeats_hello_and_announces_children_again(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder
) -> None:
    from tests.faults import ResetProxy

    # Through a proxy that refuses until the recorder is subscribed again: with full jitter
    # the uplink's retry may come at once, and a hello routed to nobody would look lost.
    proxy = ResetProxy(mosquitto_tls.port)
    proxy.start()
    settings = settings_for(tmp_path, mosquitto_tls, port=proxy.port)
    uplink = RunningUplink(settings, backoff=(1.0, 1.0))
    uplink.start()
    try:
        assert uplink.wait_connected(10)
        acks = Acks()
        send(uplink, event(1), acks, "a")
        assert acks.wait(1) == ["a"]
        recorder.wait_for(6)
        proxy.refuse(True)
        mosquitto_tls.stop()
        mosquitto_tls.start()
        recorder.wait_subscribed(2)
        proxy.refuse(False)
        assert recorder.wait_for(10)[6:] == GATEWAY_HELLO_BARE
        send(uplink, event(1), acks, "b")
        assert acks.wait(2) == ["a", "b"]
        messages = recorder.wait_for(12)
        assert messages[6:] == [
            *GATEWAY_HELLO_BARE,
            ("s/us", "101,ac63be123456,dashButton_1,c8y_DashButton"),
            ("s/us/ac63be123456",
             "400,c8y_MAC_Event,dashButton_1 pressed (ac:63:be:12:34:56),"
             "2026-11-26T08:00:01.234+00:00"),
        ]
    finally:
        uplink.stop()
        proxy.stop()


def test_a_socket_error_from_the_hello_is_a_lost_connection_retried(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An OSError from the awaited hello (the start-up, not a row) is what a dropped socket
    raises: the link reconnects and delivers, as for a row's PUBLISH. It used to end
    `Uplink.run` with the ConnectionResetError (in the daemon, exit 1 instead of a reconnect)."""
    faults = break_client_publishes(
        monkeypatch, [ConnectionResetError(104, "Connection reset by peer")])
    caplog.set_level(logging.INFO, logger="dashkanban.c8y")
    settings = settings_for(tmp_path, mosquitto_tls)
    uplink = RunningUplink(settings, supported_operations=["c8y_KanbanRefilled"], backoff=FAST)
    uplink.start()
    try:
        assert uplink.wait_connected(10)
        assert faults == []
        acks = Acks()
        send(uplink, event(1), acks, "a")
        assert acks.wait(1) == ["a"]
        assert recorder.wait_for(6) == [
            *GATEWAY_HELLO,
            ("s/us", "101,ac63be123456,dashButton_1,c8y_DashButton"),
            ("s/us/ac63be123456",
             "400,c8y_MAC_Event,dashButton_1 pressed (ac:63:be:12:34:56),"
             "2026-11-26T08:00:01.234+00:00"),
        ]
        task = uplink.task
        assert task is not None
        assert not task.done()
        assert acks.lost == []
    finally:
        uplink.stop()
    lost = [r.getMessage().split("; reconnecting in")[0] for r in caplog.records
            if "; reconnecting in" in r.getMessage()]
    assert lost == [f"connection to 127.0.0.1:{mosquitto_tls.port} lost "
                    "([Errno 104] Connection reset by peer)"]


def test_a_bug_in_the_hello_publish_still_ends_run(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the same place, anything but a connection error is a bug: `Uplink.run` ends with it
    (exit 1 in the daemon) instead of reconnecting for ever into the same bug."""
    break_client_publishes(monkeypatch, [KeyError("injected: a bug in the hello")])
    uplink = RunningUplink(settings_for(tmp_path, mosquitto_tls), backoff=FAST)
    uplink.start()
    try:
        assert repr(uplink.failure(10)) == "KeyError('injected: a bug in the hello')"
        assert not uplink.connected
    finally:
        uplink.stop()
    assert recorder.messages == []


def test_per_device_mode_one_client_per_button(tmp_path: Path, mosquitto_tls: Mosquitto,
                                               recorder: Recorder) -> None:
    settings = settings_for(tmp_path, mosquitto_tls, mode="per-device")
    uplink = RunningUplink(settings, backoff=FAST)
    uplink.start()
    try:
        acks = Acks()
        for n, label in ((1, "a"), (2, "b")):
            ev = event(n)
            assert uplink.wait_connected(10, ev)
            send(uplink, ev, acks, label)
            acks.wait(1 if label == "a" else 2)
        assert acks.delivered == ["a", "b"]
        assert recorder.wait_for(6) == [
            ("s/us", "100,dashButton_1,c8y_DashButton"),
            ("s/us", "500"),
            ("s/us", "400,c8y_MAC_Event,dashButton_1 pressed (ac:63:be:12:34:56),"
                     "2026-11-26T08:00:01.234+00:00"),
            ("s/us", "100,dashButton_2,c8y_DashButton"),
            ("s/us", "500"),
            ("s/us", "400,c8y_MAC_Event,dashButton_2 pressed (fc:a6:67:0a:0b:0c),"
                     "2026-11-26T08:00:02.234+00:00"),
        ]
        client_ids = [line for line in mosquitto_tls.log_text().splitlines()
                      if "New client connected" in line and "test-recorder" not in line]
        assert [line.split(" as ")[1].split(" ")[0] for line in client_ids] == [
            "ac63be123456", "fca6670a0b0c"
        ]
    finally:
        uplink.stop()


def test_operations_and_errors_from_cumulocity(tmp_path: Path, mosquitto_tls: Mosquitto,
                                               recorder: Recorder,
                                               caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(tmp_path, mosquitto_tls)
    received: list[SmartRestLine] = []
    got = threading.Event()

    def on_operation(line: SmartRestLine) -> None:
        received.append(line)
        if len(received) == 2:
            got.set()

    uplink = RunningUplink(settings, on_operation=on_operation, backoff=FAST)
    uplink.start()
    caplog.set_level(logging.INFO, logger="dashkanban.c8y")
    try:
        assert uplink.wait_connected(10)
        recorder.publish("s/e", "41,100,Device already existing\n"
                                "50,100,Error on device creation, message: Error on identity "
                                "creation")
        recorder.publish("s/ds", 'c8y_x\n510,dashkanban-gw-01\n'
                                 '511,ac63be123456,"refill ""A3"""')
        assert got.wait(10)
        assert received == [
            SmartRestLine("c8y_x", ()),
            SmartRestLine("510", ("dashkanban-gw-01",)),
        ] or received[:2] == [SmartRestLine("c8y_x", ()),
                              SmartRestLine("510", ("dashkanban-gw-01",))]
    finally:
        uplink.stop()
    assert received == [
        SmartRestLine("c8y_x", ()),
        SmartRestLine("510", ("dashkanban-gw-01",)),
        SmartRestLine("511", ("ac63be123456", 'refill "A3"')),
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert "Cumulocity: device dashkanban-gw-01 already exists (fine)" in messages
    # An error that follows one of our lines names it, as ERROR (issue 13); `41,100` stays fine.
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "Cumulocity refused 100,Store 3 button gateway,c8y_DashKanbanGateway on s/us: error 50 "
        "(server error between SmartREST and the platform): Error on device creation, message: "
        "Error on identity creation; not sent again"
    ]


def test_message_over_the_size_limit_is_refused_locally(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder,
    caplog: pytest.LogCaptureFixture
) -> None:
    uplink = RunningUplink(settings_for(tmp_path, mosquitto_tls), backoff=FAST)
    uplink.start()
    try:
        assert uplink.wait_connected(10)
        with pytest.raises(MessageTooLargeError) as info:
            uplink.send(event(1, text="x" * 16_000))
        assert str(info.value) == (
            "a message of 16048 bytes for s/us/ac63be123456 is over Cumulocity's limit of "
            "16000 bytes; shorten [event] text"
        )
        assert caplog.records[-1].getMessage().startswith(
            "refusing to publish 16048 bytes on s/us/ac63be123456 (Cumulocity's limit is 16000)"
        )
        acks = Acks()
        send(uplink, event(1), acks, "a")  # the child is still announced before its event
        acks.wait(1)
        assert [t for t, _ in recorder.wait_for(6)] == ["s/us"] * 5 + ["s/us/ac63be123456"]
    finally:
        uplink.stop()


def test_wrong_password_gives_up_after_a_few_attempts(tmp_path: Path,
                                                      mosquitto_tls: Mosquitto) -> None:
    uplink = RunningUplink(settings_for(tmp_path, mosquitto_tls, password="wrong"), max_refusals=2,
                    backoff=FAST)
    uplink.start()
    try:
        assert not uplink.wait_connected(10)
        assert isinstance(uplink.failed, LoginRefusedError)
        assert uplink.failed.code == 5
        assert str(uplink.failed) == (
            f"127.0.0.1:{mosquitto_tls.port} refused the login for t12345/dash-gateway: not "
            "authorised (CONNACK 5); check user and password in [C8YMQTT] and that the user may "
            "connect devices (with a certificate: that its CN equals [gateway] "
            "serial and the tenant trusts its CA)"
        )
        # Exactly max_refusals attempts reached the broker. No third can come: the link sets
        # `failed` as it returns from run(). mosquitto logs a refusal after its CONNACK, so its
        # second line may still be on its way: waited for, not slept for.
        deadline = time.monotonic() + 10
        while mosquitto_tls.log_text().count("disconnected, not authorised.") < 2:
            assert time.monotonic() < deadline, mosquitto_tls.log_text()
            time.sleep(0.02)
        assert mosquitto_tls.log_text().count("disconnected, not authorised.") == 2
    finally:
        uplink.stop()


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    backoff = Backoff(1.0, 60.0)
    lows = [backoff.delay(n, rand=lambda: 0.0) for n in range(1, 9)]
    highs = [backoff.delay(n, rand=lambda: 1.0) for n in range(1, 9)]
    halves = [backoff.delay(n, rand=lambda: 0.5) for n in range(1, 9)]
    assert highs == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert lows == [0.0] * 8
    assert halves == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert Backoff(1.0, 60.0).ceiling(10_000) == 60.0  # no overflow after a long outage


def test_run_retries_refusals_from_30_s_and_transport_from_1_s_both_capped_by_retry_max(
    tmp_path: Path, mosquitto_tls: Mosquitto
) -> None:
    from dataclasses import replace

    from dashkanban.backoff import uplink_backoffs
    from dashkanban.c8y.mqtt import service_options

    assert uplink_backoffs(300) == (Backoff(1.0, 300), Backoff(30.0, 300))
    assert uplink_backoffs(1) == (Backoff(1.0, 1), Backoff(1.0, 1))
    settings = settings_for(tmp_path, mosquitto_tls)
    settings = replace(settings, c8y=replace(settings.c8y, retry_max=120))
    assert service_options(settings) == {
        "max_refusals": None, "backoff": Backoff(1.0, 120), "refusal_backoff": Backoff(30.0, 120)}


def test_error_lines_in_words() -> None:
    assert describe_error_line("40,999,No static template for this message id") == (
        "Cumulocity error 40 (no such static template) for template 999: "
        "No static template for this message id"
    )
    assert describe_error_line(
        "41,,MqttAuth: Cannot publish token for device that do not use certificate authentication"
    ) == ("Cumulocity error 41 (template or creation error): MqttAuth: Cannot publish token for "
          "device that do not use certificate authentication")


@pytest.fixture
def mosquitto_cert(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Mosquitto]:
    """TLS that requires a client certificate signed by the test CA (no password file)."""
    _need_mosquitto()
    broker = Mosquitto(tmp_path / "mosquitto-cert", free_port(), tls=tls_files,
                       require_certificate=True)
    broker.start()
    yield broker
    broker.stop()


def cert_config(folder: Path, broker: Mosquitto, tls: TlsFiles, *, with_cert: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MACID.csv").write_text("Name, MAC-Address\n")
    cert = f"cert_file = {tls.client_cert}\nkey_file = {tls.client_key}\n" if with_cert else (
        "password = unused\n"
    )
    path = folder / "config.ini"
    path.write_text(
        f"[C8YMQTT]\ntenant = localhost\ntenantID = t12345\nuser = dash-gateway\n"
        f"port = {broker.port}\nca_file = {tls.ca_cert}\n{cert}"
        # With a certificate the client id must equal its CN (docs/protocol.md 1.3).
        "[gateway]\nserial = dashkanban-gw-test\nname = cert gateway\n"
    )
    path.chmod(0o600)
    return path


def test_client_certificate_instead_of_a_password(
    tmp_path: Path, mosquitto_cert: Mosquitto, tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DASHKANBAN_PASSWORD", raising=False)
    settings = load_settings(cert_config(tmp_path / "ok", mosquitto_cert, tls_files,
                                         with_cert=True))
    assert settings.c8y.password is None
    uplink = RunningUplink(settings, backoff=FAST)
    uplink.start()
    try:
        assert uplink.wait_connected(10)
        acks = Acks()
        send(uplink, event(1), acks, "a")
        assert acks.wait(1) == ["a"]
    finally:
        uplink.stop()
    assert ("New client connected from 127.0.0.1" in mosquitto_cert.log_text())
    assert "as dashkanban-gw-test (p2, c1, k60, u'dashkanban-gw-test')" in (
        mosquitto_cert.log_text()
    )
    # Without the certificate the broker ends the handshake: a connection error, retried.
    no_cert = RunningUplink(load_settings(cert_config(tmp_path / "no", mosquitto_cert, tls_files,
                                               with_cert=False)), backoff=FAST)
    no_cert.start()
    try:
        assert not no_cert.wait_connected(1)
        assert str(no_cert.last_error) == (
            f"localhost:{mosquitto_cert.port} closed the connection before CONNACK (Unspecified "
            "error); check port and tls, and cert_file if the broker requires a client "
            "certificate"
        )
    finally:
        no_cert.stop()


@pytest.mark.parametrize(("code", "text"), [
    (134, "bad user name or password (CONNACK 4); check user and password in [C8YMQTT]"),
    (133, "client id rejected (CONNACK 2); check [gateway] serial (no ':' in it; Cumulocity "
          "reserves the colon)"),
    (135, "not authorised (CONNACK 5); check user and password in [C8YMQTT] and that the user "
          "may connect devices (with a certificate: that its CN equals [gateway] serial and the "
          "tenant trusts its CA)"),
    (136, "server unavailable (CONNACK 3); Cumulocity is temporarily unavailable; dashkanban "
          "retries"),
    (4, "bad user name or password (CONNACK 4); check user and password in [C8YMQTT]"),
])
def test_connack_refusals_in_words(code: int, text: str) -> None:
    error = LoginRefusedError(mqtt.connack_code(code), "h:8883", "t1/u")
    assert str(error) == f"h:8883 refused the login for t1/u: {text}"


def test_heartbeat_keeps_an_idle_gateway_available(tmp_path: Path, mosquitto_tls: Mosquitto,
                                                   recorder: Recorder) -> None:
    """Nothing on s/us for `heartbeat` seconds: a `125` (docs/protocol.md 2.3). Events on a child's
    topic do not count as the gateway's own traffic; a `101` on s/us does."""
    settings = settings_for(tmp_path, mosquitto_tls)
    uplink = RunningUplink(settings, supported_operations=["c8y_KanbanRefilled"], backoff=FAST,
                    heartbeat=0.3)
    uplink.start()
    try:
        assert uplink.wait_connected(10)
        assert recorder.wait_for(6)[:6] == [*GATEWAY_HELLO, ("s/us", "125"), ("s/us", "125")]
        acks = Acks()
        send(uplink, event(1), acks, "a")
        assert acks.wait(1) == ["a"]
        # Until two messages after the event: more beats may come before the 101 (one each
        # 0.3 s while this thread is slow), so an absolute count could end before them.
        announce = ("s/us", "101,ac63be123456,dashButton_1,c8y_DashButton")
        messages = recorder.wait_for(8)
        while announce not in messages or len(messages) < messages.index(announce) + 4:
            assert len(messages) < 50, messages  # bounded: the beats go on
            more = recorder.wait_for(len(messages) + 1)
            assert len(more) > len(messages), messages
            messages = more
        start = messages.index(announce)
        assert messages[start + 1][0] == "s/us/ac63be123456"
        assert messages[start + 2:start + 4] == [("s/us", "125"), ("s/us", "125")]
        assert {m for m in messages[4:] if m[0] == "s/us"} == {
            ("s/us", "125"), ("s/us", "101,ac63be123456,dashButton_1,c8y_DashButton")}
    finally:
        uplink.stop()


def test_heartbeat_at_most_every_5_minutes_and_half_the_required_interval(
        tmp_path: Path, mosquitto_tls: Mosquitto) -> None:
    """Issue 15: the tenant's interval may differ from ours (117 sets only a missing one), so the
    beat is at most 5 minutes apart; with required_interval = 0 no 117 goes out, but the beat does.
    (Before issue 15: half the interval, 1800 s for 60 minutes, and none for 0.)"""
    settings = settings_for(tmp_path, mosquitto_tls)
    assert settings.gateway.required_interval == 60  # minutes
    assert Uplink(settings).heartbeat == 300.0
    assert Uplink(settings).gateway_plan().heartbeat == 300.0
    assert Uplink(settings, heartbeat=0).gateway_plan().heartbeat is None
    with pytest.raises(ValueError, match="heartbeat must be 0"):
        Uplink(settings, heartbeat=-1)

    def with_interval(minutes: int) -> Uplink:
        return Uplink(dataclasses.replace(
            settings, gateway=dataclasses.replace(settings.gateway, required_interval=minutes)))

    assert with_interval(6).gateway_plan().heartbeat == 180.0
    assert with_interval(1).gateway_plan().heartbeat == 30.0
    off = with_interval(0).gateway_plan()
    assert off.heartbeat == 300.0
    assert off.after_subscribe == ("114", "500")  # never 117,0: that means maintenance
    assert with_interval(60).gateway_plan().after_subscribe == ("114", "117,60", "500")


def test_required_interval_0_puts_no_117_on_the_wire(tmp_path: Path, mosquitto_tls: Mosquitto,
                                                    recorder: Recorder) -> None:
    """`117,0` would put the gateway into MAINTENANCE (device-availability.md): with
    required_interval = 0 the independent subscriber sees the start-up without any 117."""
    settings = settings_for(tmp_path, mosquitto_tls)
    settings = dataclasses.replace(
        settings, gateway=dataclasses.replace(settings.gateway, required_interval=0))
    uplink = RunningUplink(settings, supported_operations=["c8y_KanbanRefilled"], backoff=FAST)
    uplink.start()
    try:
        assert uplink.wait_connected(10)
        assert recorder.wait_for(3) == [GATEWAY_HELLO[0], GATEWAY_HELLO[1], GATEWAY_HELLO[3]]
        # An event after the start-up, on the same connection: a 117 of the start-up would
        # reach the subscriber before it (was: a fixed sleep, then nothing seen).
        acks = Acks()
        send(uplink, event(1), acks, "a")
        assert acks.wait(1) == ["a"]
        assert recorder.wait_for(5) == [
            GATEWAY_HELLO[0], GATEWAY_HELLO[1], GATEWAY_HELLO[3],
            ("s/us", "101,ac63be123456,dashButton_1,c8y_DashButton"),
            ("s/us/ac63be123456",
             "400,c8y_MAC_Event,dashButton_1 pressed (ac:63:be:12:34:56),"
             "2026-11-26T08:00:01.234+00:00"),
        ]
        assert not [m for m in recorder.messages if m[1].startswith("117")]
    finally:
        uplink.stop()


def test_a_stop_while_waiting_for_the_connack_leaves_no_socket_or_task_behind(
    tmp_path: Path, mosquitto_tls: Mosquitto, tls_files: TlsFiles
) -> None:
    """A broker that completes TLS and then never answers the CONNECT: stopping the uplink then
    (a SIGTERM at the wrong moment) closes the connection and ends aiomqtt's housekeeping task,
    instead of leaving both to outlive the loop (`link._abandon`)."""
    import asyncio
    import socket
    import ssl

    from tests.running import LoopThread

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    closed = threading.Event()
    connected = threading.Event()

    def silent_broker(server: socket.socket) -> None:
        conn, _ = server.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            connected.set()
            tls.settimeout(30)
            while tls.recv(4096):  # the CONNECT, then nothing until the client closes
                pass
        closed.set()

    with socket.create_server(("127.0.0.1", 0)) as server:
        broker = threading.Thread(target=silent_broker, args=(server,), daemon=True)
        broker.start()
        settings = settings_for(tmp_path, mosquitto_tls, port=server.getsockname()[1])
        loop = LoopThread()
        try:
            uplink = Uplink(settings, backoff=FAST)
            task = loop.task(uplink.run())
            assert connected.wait(10)

            async def stop() -> list[str]:
                task.cancel()
                await asyncio.wait({task})
                await asyncio.sleep(0.05)
                me = asyncio.current_task()
                return [t.get_coro().__qualname__ for t in asyncio.all_tasks()
                        if t is not me and not t.done()]

            assert loop.wait(stop(), timeout=20) == []
            assert closed.wait(10)
        finally:
            loop.close()
        broker.join(10)


def test_a_bug_in_a_publish_of_the_link_itself_ends_the_uplink(
    tmp_path: Path, mosquitto_tls: Mosquitto, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A start-up PUBLISH (here the `500`) has no row to fail: a bug in it used to be read as a
    failed PUBLISH and dropped, the link staying "ready" with its start-up half done. It ends
    `Uplink.run` instead (the daemon's supervisor then exits 1); a connection error does not."""

    from dashkanban.c8y.link import Link, _Client
    from dashkanban.c8y.protocol import Outgoing

    original = Link._publish

    async def publish(self: Link, client: _Client, message: Outgoing) -> None:
        if message.payload == "500":
            raise AssertionError("injected: a bug in a start-up PUBLISH")
        await original(self, client, message)

    monkeypatch.setattr(Link, "_publish", publish)
    uplink = RunningUplink(settings_for(tmp_path, mosquitto_tls), backoff=FAST)
    uplink.start()
    try:
        assert repr(uplink.failure(10)) == "AssertionError('injected: a bug in a start-up PUBLISH')"
    finally:
        uplink.stop()
    assert "exception was never retrieved" not in caplog.text


@pytest.mark.parametrize("bug", [ValueError, PermissionError])
def test_a_bug_in_the_operation_handler_ends_the_uplink(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder,
    caplog: pytest.LogCaptureFixture, bug: type[Exception],
) -> None:
    """The handler of `on_operation` raising is a bug: it used to be logged and the next
    operation handed to the same handler; it ends `Uplink.run` (exit 1 in the daemon). Also
    when the bug is an OSError (PermissionError): only the link's own PUBLISHes and SUBSCRIBEs
    take an OSError for a lost connection, so it is not retried for ever."""

    def on_operation(line: SmartRestLine) -> None:
        raise bug(f"injected: a bug in the handler of {line.template}")

    uplink = RunningUplink(settings_for(tmp_path, mosquitto_tls), on_operation=on_operation,
                           backoff=FAST)
    uplink.start()
    try:
        assert uplink.wait_connected(10)
        recorder.publish("s/ds", "510,dashkanban-gw-01")
        assert repr(uplink.failure(10)) == (
            f"{bug.__name__}('injected: a bug in the handler of 510')")
    finally:
        uplink.stop()
    assert "the operation handler failed" not in caplog.text
    assert "lost" not in caplog.text  # not taken for a lost connection
