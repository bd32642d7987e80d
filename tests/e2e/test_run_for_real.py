"""`dashkanban run` for real, never as root (issue 7): the installed command runs as `nobody` with
CAP_NET_RAW as its only capability (setpriv, as the unit's AmbientCapabilities grants it), inside
namespace B of a veth pair, capturing presses sent from namespace A and delivering them over TLS
to a mosquitto that listens on B's loopback. An independent subscriber, also in B, sees exactly
the contract's messages.

The same site then goes through everything else a plant's IT would run: offline queueing,
`outbox status`, `outbox flush`, `check`, `test-button`, `replay` to the broker and a refused
login, all as `nobody` at `--log-level debug`. Every byte they print, and every file they leave,
is searched for the configured password; the files' permissions are checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from tests import forge
from tests.brokers import Mosquitto, TlsFiles, free_port
from tests.c8y.support import BUTTONS_CSV, Recorder
from tests.conftest import BROKER_PASSWORD, BROKER_USER
from tests.e2e.netns import Pair, in_netns, ip, sender
from tests.file_readers import MISSING, READERS, child_prefix
from tests.service_helpers import (
    SBIN_PATH,
    as_user_prefix,
    system_venv_folder,
)

pytestmark = pytest.mark.netns

NOBODY = 65534
BUTTON, OTHER = "ac:63:be:12:34:56", "fc:a6:67:0a:0b:0c"
WRONG_PASSWORD = "not-the-pw-9d1c"
HELLO = [
    ("s/us", "100,Store 3 button gateway,c8y_DashKanbanGateway"),
    ("s/us", "114"),
    ("s/us", "117,60"),
    ("s/us", "500"),
]
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) +(\S+): (.*)")


@pytest.fixture
def script(system_dashkanban: Path) -> Path:
    """`dashkanban` in a system-Python venv: nobody cannot reach an interpreter under /root."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and util-linux's setpriv to drop to nobody")
    return system_dashkanban


@dataclass
class Site:
    """A config folder owned by nobody (as /etc/dashkanban and /var/lib/dashkanban would be)."""

    folder: Path
    config: Path
    wrong: Path  # the same site with a wrong password
    outbox: Path
    capture_file: Path
    port: int  # the broker's, in namespace B
    outputs: list[str] = field(default_factory=list)  # everything any command printed
    # Before each command: `child_prefix(reader)`, to run it as on a machine without libpcap.
    prefix: list[str] = field(default_factory=list)


@pytest.fixture
def site(tls_files: TlsFiles, veth_pair: Pair) -> Iterator[Site]:
    folder = system_venv_folder(f"test-run-site-{uuid.uuid4().hex[:8]}")
    folder.mkdir(parents=True, mode=0o700)
    try:
        shutil.copy(tls_files.ca_cert, folder / "ca.pem")
        (folder / "MACID.csv").write_text(BUTTONS_CSV)
        outbox = folder / "state" / "outbox.sqlite3"  # the outbox makes state/ itself
        port = free_port()

        def config(name: str, password: str) -> Path:
            path = folder / name
            path.write_text(
                "[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\n"
                f"user = {BROKER_USER.split('/', 1)[1]}\npassword = {password}\nport = {port}\n"
                f"ca_file = {folder / 'ca.pem'}\n"
                "[gateway]\nserial = dashkanban-gw-01\nname = Store 3 button gateway\n"
                f"[capture]\ninterface = {veth_pair.if_b}\n"
                f"[outbox]\npath = {outbox}\n"
            )
            path.chmod(0o600)
            return path

        capture_file = folder / "presses.pcap"
        with capture_file.open("wb") as f:
            forge.write_pcap(f, [
                (1795680000.25, forge.arp_frame(1, BUTTON, "0.0.0.0", "192.168.10.51")),
                (1795680000.5, forge.dhcp_client_frame(BUTTON, forge.DISCOVER)),  # same press
                (1795680100.125, forge.dhcp_client_frame(OTHER, forge.DISCOVER)),
            ])
        made = Site(folder, config("config.ini", BROKER_PASSWORD),
                    config("wrong.ini", WRONG_PASSWORD), outbox, capture_file, port)
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        yield made
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def broker(tmp_path: Path, tls_files: TlsFiles, veth_pair: Pair, site: Site) -> Iterator[Mosquitto]:
    """mosquitto over TLS on namespace B's loopback, on the port the site's config names."""
    ip("-n", veth_pair.ns_b, "link", "set", "lo", "up")
    mosquitto = Mosquitto(tmp_path / "mosquitto", site.port, tls=tls_files,
                          users={BROKER_USER: BROKER_PASSWORD}, netns=veth_pair.ns_b)
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def recorder(broker: Mosquitto, tls_files: TlsFiles, veth_pair: Pair) -> Iterator[Recorder]:
    rec = in_netns(veth_pair.ns_b, lambda: Recorder(broker, tls_files))
    yield rec
    rec.close()


def command(pair: Pair, script: Path, fmt: str, *args: str, net_raw: bool = False) -> list[str]:
    return ["ip", "netns", "exec", pair.ns_b, *as_user_prefix(NOBODY, net_raw=net_raw),
            str(script), "--log-level", "debug", "--log-format", fmt, *args]


ENV = {"PATH": SBIN_PATH, "LANG": "C.UTF-8"}


def dk(site: Site, pair: Pair, script: Path, fmt: str, *args: str, net_raw: bool = False
       ) -> subprocess.CompletedProcess[str]:
    """One command as nobody in namespace B; its output is kept for the password search."""
    done = subprocess.run([*site.prefix, *command(pair, script, fmt, *args, net_raw=net_raw)],
                          capture_output=True, text=True, check=False, timeout=60, env=ENV,
                          cwd="/")
    site.outputs += [done.stdout, done.stderr]
    return done


def log_lines(stderr: str, fmt: str) -> list[tuple[str, str, str]]:
    """(level, logger, message) of every stderr line; every line must be in the format asked."""
    result = []
    for line in stderr.splitlines():
        if fmt == "json":
            data = json.loads(line)
            assert list(data)[:4] == ["time", "level", "logger", "message"], line
            result.append((data["level"].upper(), data["logger"], data["message"]))
        else:
            match = TEXT_LINE.fullmatch(line)
            assert match is not None, line
            result.append((match[1], match[2], match[3]))
    return result


def final_message(stderr: str, fmt: str) -> str:
    """The message of `main`'s final error line, which is JSON too in json mode."""
    last = stderr.splitlines()[-1]
    if fmt == "json":
        data = json.loads(last)
        assert (data["level"], data["logger"]) == ("error", "dashkanban.cli")
        return str(data["message"])
    assert last.startswith("error: ")
    return last.removeprefix("error: ")


def wait_for_line(path: Path, pattern: str, timeout: float = 20.0) -> str:
    """The first line of the file matching `pattern` (a regex), polling while the daemon runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if re.search(pattern, line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line matching {pattern!r} in:\n{path.read_text()}")


def press_until(frames_out: object, frame: bytes, recorder: Recorder, count: int
                ) -> tuple[float, float, list[tuple[str, str]]]:
    """Send `frame` (bounded, 0.1 s apart: all within one dead time) until the broker has routed
    `count` messages; returns the wall-clock window of the sends and the messages."""
    first = time.time()
    messages: list[tuple[str, str]] = []
    for _ in range(100):
        frames_out.send(frame)  # type: ignore[attr-defined]
        messages = recorder.wait_for(count, timeout=0.1)
        if len(messages) >= count:
            break
    return first, time.time(), messages


def event_time(payload: str, prefix: str, window: tuple[float, float]) -> str:
    """The time field of a `400` line, checked to be the press's capture time."""
    match = re.fullmatch(re.escape(prefix) + f"({STAMP})", payload)
    assert match is not None, payload
    when = datetime.fromisoformat(match[1]).timestamp()
    assert window[0] - 0.001 <= when <= window[1], (when, window)
    return match[1]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_nobody_with_cap_net_raw_runs_it_for_real_and_never_shows_the_password(
    fmt: str, reader: str, tmp_path: Path, script: Path, veth_pair: Pair, site: Site,
    broker: Mosquitto, recorder: Recorder,
) -> None:
    # The whole site as on a machine with libpcap, and as on one without (issue 16): only
    # replay reads a file, and only its summary line (and one DEBUG line) may differ.
    site.prefix = child_prefix(reader)
    # -- run: as nobody holding CAP_NET_RAW only, in namespace B -------------------------------
    err_path, out_path = tmp_path / "run.err", tmp_path / "run.out"
    with err_path.open("w") as err, out_path.open("w") as out:
        daemon = subprocess.Popen(
            [*site.prefix,
             *command(veth_pair, script, fmt, "run", "-c", str(site.config), net_raw=True)],
            stdout=out, stderr=err, env=ENV, cwd="/",
        )
    frames_out = sender(veth_pair)
    try:
        assert recorder.wait_for(4, timeout=30) == HELLO, err_path.read_text()
        wait_for_line(err_path, "capturing on " + veth_pair.if_b)
        start, end, messages = press_until(
            frames_out, forge.dhcp_client_frame(BUTTON, forge.DISCOVER), recorder, 6)
        assert messages[4] == ("s/us", "101,ac63be123456,dashButton_1,c8y_DashButton")
        assert messages[5][0] == "s/us/ac63be123456"
        t1 = event_time(messages[5][1], f"400,c8y_MAC_Event,dashButton_1 pressed ({BUTTON}),",
                        (start, end))
        wait_for_line(err_path, re.escape(f"dashButton_1 ({BUTTON}) pressed at {t1}: delivered"))

        # Cumulocity away: the press is queued, and the log says so, once.
        broker.stop()
        wait_for_line(err_path, "reconnecting in")
        start = time.time()
        for _ in range(3):
            frames_out.send(forge.dhcp_client_frame(OTHER, forge.DISCOVER))
        queued = wait_for_line(err_path, re.escape(f"dashButton_2 ({OTHER}) pressed at ") + STAMP
                               + re.escape(": queued, Cumulocity not connected: "))
        t2 = re.search(f"pressed at ({STAMP})", queued)[1]  # type: ignore[index]
        assert start - 0.001 <= datetime.fromisoformat(t2).timestamp() <= time.time()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        frames_out.close()
    run_err = err_path.read_text()
    site.outputs += [run_err, out_path.read_text()]
    lines = log_lines(run_err, fmt)
    messages_logged = [m for _, _, m in lines]
    # One line per press, with the button's name and the delivery result; none for the unknown.
    per_press = [(level, logger, m) for level, logger, m in lines if " pressed at " in m]
    assert [(level, logger) for level, logger, _ in per_press] == [
        ("INFO", "dashkanban.outbox.courier"), ("INFO", "dashkanban.commands.run")]
    assert per_press[0][2] == f"dashButton_1 ({BUTTON}) pressed at {t1}: delivered"
    # ... with why: the connection just dropped, or (if a retry came first) it is refused.
    address = re.escape(f"127.0.0.1:{broker.port}")
    assert re.fullmatch(
        re.escape(f"dashButton_2 ({OTHER}) pressed at {t2}: queued, Cumulocity not connected: ")
        + f"(connection to {address} lost \\(.+\\)|cannot connect to {address}: Connection "
        "refused)", per_press[1][2]), per_press[1][2]
    assert "stopping with 1 event queued; it is sent at the next start" in messages_logged
    assert messages_logged[-1] == "dashkanban stopped"
    assert "SIGTERM: stopping" in messages_logged

    # -- what the run left: the outbox is the service user's alone -------------------------------
    state = site.outbox.parent
    assert (state.stat().st_mode & 0o7777, state.stat().st_uid) == (0o750, NOBODY)
    for path in state.iterdir():  # the database and SQLite's -wal and -shm
        assert (path.stat().st_mode & 0o7777, path.stat().st_uid) == (0o600, NOBODY), path

    status = dk(site, veth_pair, script, fmt, "outbox", "status", "-c", str(site.config))
    assert status.returncode == 0, status.stderr
    out = status.stdout.splitlines()
    assert out[0] == f"outbox: {site.outbox}"
    assert out[1].startswith("queued: 1 event, ")  # not "1 events" (issue 14)
    assert out[2].startswith(f"oldest: {t2} dashButton_2 ({OTHER}), queued ")
    # issue 11: the state the stopped service left next to the outbox (0600 like the rest)
    assert out[-1].startswith("uplink: dashkanban run is not running (last state written ")

    # -- Cumulocity back: flush, check, test-button, replay -------------------------------------
    broker.start()
    recorder.wait_subscribed(2, timeout=20)
    before = len(recorder.messages)
    flush = dk(site, veth_pair, script, fmt, "outbox", "flush", "-c", str(site.config))
    assert flush.returncode == 0, flush.stderr
    routed = recorder.wait_for(before + 6)[before:]
    assert routed[:4] == HELLO
    assert routed[4:] == [
        ("s/us", "101,fca6670a0b0c,dashButton_2,c8y_DashButton"),
        ("s/us/fca6670a0b0c",
         f"400,c8y_MAC_Event,dashButton_2 pressed (fc:a6:67:0a:0b:0c),{t2}"),
    ]

    # As the service user (with CAP_NET_RAW). The site's MACID.csv has bins, so `run` writes
    # their c8y_Kanban fragment over REST, which this broker lacks: check tries REST too and
    # says so (issue 14: a dead rest_url used to pass), every other step passing.
    check = dk(site, veth_pair, script, fmt, "check", "-c", str(site.config), net_raw=True)
    assert check.returncode == 1, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    assert lines[0] == f"✓ config {site.config}"
    assert [line[:1] for line in lines] == ["✓"] * 8 + ["✗", " "], lines
    assert lines[-2].startswith("✗ REST https://127.0.0.1: ")
    assert final_message(check.stderr, fmt) == (
        "check: 1 step failed (REST); see the lines marked ✗ above")

    before = len(recorder.messages)
    tested = dk(site, veth_pair, script, fmt, "test-button", "-c", str(site.config),
                "dashButton_1")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    routed = recorder.wait_for(before + 6)[before:]
    assert routed[4] == ("s/us", "101,ac63be123456,dashButton_1,c8y_DashButton")
    assert routed[5][1].startswith("400,c8y_MAC_Event,dashButton_1 pressed (ac:63:be:12:34:56),")

    before = len(recorder.messages)
    replayed = dk(site, veth_pair, script, fmt, "replay", "-c", str(site.config),
                  str(site.capture_file))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    routed = recorder.wait_for(before + 8)[before:]
    assert [m for m in routed if not m[1].startswith(("100,", "114", "117,", "500"))] == [
        ("s/us", "101,ac63be123456,dashButton_1,c8y_DashButton"),
        ("s/us/ac63be123456",
         f"400,c8y_MAC_Event,dashButton_1 pressed ({BUTTON}),2026-11-26T08:00:00.250+00:00"),
        ("s/us", "101,fca6670a0b0c,dashButton_2,c8y_DashButton"),
        ("s/us/fca6670a0b0c",
         f"400,c8y_MAC_Event,dashButton_2 pressed ({OTHER}),2026-11-26T08:01:40.125+00:00"),
    ]

    # -- a refused login -------------------------------------------------------------------------
    refused = dk(site, veth_pair, script, fmt, "check", "-c", str(site.wrong), net_raw=True)
    assert refused.returncode == 1
    # mosquitto answers a wrong password with CONNACK 5 on MQTT 3.1.1, as Cumulocity does.
    # Printed once, as the cross of its step (issue 14); the last line sums up.
    assert (
        f"✗ MQTT login: 127.0.0.1:{broker.port} refused the login for {BROKER_USER}: not "
        "authorised (CONNACK 5); check user and password in [C8YMQTT] and that the user may "
        "connect devices (with a certificate: that its CN equals [gateway] serial and the "
        "tenant trusts its CA)"
    ) in refused.stdout.splitlines()
    assert final_message(refused.stderr, fmt) == (
        "check: 2 steps failed (uplink, REST); see the lines marked ✗ above")

    # -- every line of every command in the format asked, and no password anywhere ------------
    for command_output in (status, flush, tested):
        log_lines(command_output.stderr, fmt)
    log_lines("\n".join(check.stderr.splitlines()[:-1]), fmt)  # then its `error: check: ...`
    # replay's two summary lines are its result for people (test_replay holds them), not logs;
    # the site has bins, so replay reads with the candidate filter (the overdue check's clock)
    # (in libpcap when it is installed: it does not count what its filter skips; without it
    # the pure reader counts every record, after one DEBUG line saying why)
    replay_lines = replayed.stderr.splitlines()
    if reader == "libpcap":
        read = "3 packets passed the candidate filter in libpcap"
    else:
        read = "3 packets read, 3 passed the candidate filter"
        assert log_lines(replay_lines.pop(0), fmt) == [(
            "DEBUG", "dashkanban.capture",
            f"{site.capture_file}: not read with libpcap ({MISSING}): the pure reader filters it")]
    assert replay_lines[0] == (
        f"{site.capture_file}: {read}, 3 candidates, 0 malformed, 2 presses")
    # the reason is said once, and only when libpcap is missing
    assert not [line for line in replay_lines if "not read with libpcap" in line]
    assert replay_lines[-1] == "delivered 2 events to 127.0.0.1"
    log_lines("\n".join(replay_lines[1:-1]), fmt)
    log_lines("\n".join(refused.stderr.splitlines()[:-1]), fmt)
    everything = "\n".join(site.outputs)
    assert BROKER_PASSWORD not in everything
    assert WRONG_PASSWORD not in everything
    for path in site.folder.rglob("*"):
        if path.is_file() and BROKER_PASSWORD.encode() in path.read_bytes():
            # only the config holds it, readable by its owner alone
            assert path == site.config, path
            assert path.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_nobody_without_the_capability_exits_2_with_the_hint(
    fmt: str, script: Path, veth_pair: Pair, site: Site
) -> None:
    done = subprocess.run(
        command(veth_pair, script, fmt, "run", "-c", str(site.config)),
        capture_output=True, text=True, check=False, timeout=60, env=ENV, cwd="/",
    )
    python = os.path.realpath(script.parent / "python")
    # setcap only for a venv's own copy of the interpreter, never the shared one (issue 14).
    if python.startswith(os.path.realpath(script.parent.parent) + "/"):
        how = ("or grant the capability to this installation's own interpreter: sudo setcap "
               f"cap_net_raw+ep {python}")
    else:
        how = (", or give one command the capability: sudo setpriv --reuid=USER --regid=GROUP "
               "--init-groups --inh-caps=+net_raw --ambient-caps=+net_raw dashkanban run; not "
               f"setcap on {python}, which every Python program shares (docs/install.md)")
    hint = (f"cannot capture on {veth_pair.if_b}: this process lacks CAP_NET_RAW; run it as the "
            "service (sudo dashkanban service install)" + ("" if how[0] == "," else " ") + how)
    assert done.returncode == 2
    assert final_message(done.stderr, fmt) == hint
    lines = done.stderr.splitlines()
    # It stops before it connects anywhere: nothing but debug lines come before the error.
    assert all(level == "DEBUG" for level, _, _ in log_lines("\n".join(lines[:-1]), fmt))
    assert not site.outbox.exists()
    assert BROKER_PASSWORD not in done.stdout + done.stderr
