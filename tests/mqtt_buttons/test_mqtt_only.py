"""`run` with MQTT buttons only (issue 19 gaps): no raw socket, so no CAP_NET_RAW needed. A real
child process without the capability delivers an MQTT press to the sandbox through a real
mosquitto; the same process with a network-join button listed is refused as `run` is."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dashkanban.capture.filters import kernel_programs
from dashkanban.compose import load_buttons
from dashkanban.config import load_settings
from dashkanban.mqtt_buttons.wiring import NoCapture, frame_source, mqtt_only
from dashkanban.sandbox import Sandbox
from tests.brokers import Mosquitto
from tests.mqtt_buttons.test_daemon_buttons import TASMOTA, ZIGBEE, events, publish, wait_until
from tests.sandbox_fixture import sandbox_config

MQTT_ONLY = (
    "Name, MAC-Address, topic, format\n"
    f"tasmota, 24:62:ab:5a:1b:2c, {TASMOTA}, tasmota\n"
    f"aqara, 0x00124b001ca1b2c3, {ZIGBEE}, zigbee2mqtt\n"
)
MIXED = MQTT_ONLY + "dash, ac:63:be:12:34:56, ,\n"
REPO = Path(__file__).resolve().parents[2]

# `dashkanban run` as the lead wires it (commands/run.py's run_command with frame_source), without
# the interface option; a config error is printed as the command line prints it.
CHILD = """
import logging, signal, sys
from pathlib import Path
from dashkanban.config import load_settings
from dashkanban.commands.run import Daemon, _on_signals
from dashkanban.errors import DashkanbanError
from dashkanban.mqtt_buttons.wiring import frame_source

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
settings = load_settings(Path(sys.argv[1]))
try:
    source = frame_source(settings, "lo")
except DashkanbanError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
daemon = Daemon(settings, source)
_on_signals(daemon.stop, (signal.SIGTERM, signal.SIGINT))
signal.signal(signal.SIGHUP, lambda _signum, _frame: daemon.reload())
sys.exit(daemon.run())
"""


def write_config(folder: Path, sandbox: Sandbox, broker: Mosquitto, macid: str) -> Path:
    (folder / "MACID.csv").write_text(macid)
    return sandbox_config(folder, sandbox, folder / "MACID.csv", extra=(
        f"[mqtt_buttons]\nhost = {broker.host}\nport = {broker.port}\n\n"
        "[event]\ntext = {name} {kind} ({trigger})\n"))


def without_net_raw() -> list[str]:
    """The prefix that runs a command with CAP_NET_RAW out of every capability set."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop CAP_NET_RAW")
    return ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", "--"]


def child(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with log.open("wb") as err:
        return subprocess.Popen([*without_net_raw(), sys.executable, "-c", CHILD, str(config)],
                                stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)


def test_mqtt_buttons_only_run_without_cap_net_raw(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto
) -> None:
    config = write_config(tmp_path, sandbox, mosquitto, MQTT_ONLY)
    log = tmp_path / "run.log"
    process = child(config, log)
    try:
        wait_until(lambda: "listening to 2 MQTT button topic(s)" in log.read_text(),
                   "the button broker", timeout=20)
        publish(mosquitto, [(ZIGBEE, b'{"action":"long"}', False)])
        wait_until(lambda: len(events(sandbox)) == 1, "the Zigbee press", timeout=20)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert events(sandbox) == [("c8y_MAC_Event", "aqara long (mqtt)")]
    lines = log.read_text().splitlines()
    assert (f"dashkanban.mqtt_buttons.wiring: every button in {tmp_path / 'MACID.csv'} is an "
            "MQTT button: no network capture (no raw socket, CAP_NET_RAW not needed)") in lines
    assert not [line for line in lines if "capturing on" in line]


def test_a_network_join_button_still_needs_cap_net_raw(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto
) -> None:
    config = write_config(tmp_path, sandbox, mosquitto, MIXED)
    log = tmp_path / "run.log"
    process = child(config, log)
    assert process.wait(timeout=30) == 2
    assert log.read_text().splitlines()[-1].startswith(
        "error: cannot capture on lo: this process lacks CAP_NET_RAW; ")
    assert events(sandbox) == []


def test_which_lists_are_mqtt_only(tmp_path: Path, sandbox: Sandbox,
                                   mosquitto: Mosquitto) -> None:
    settings = load_settings(write_config(tmp_path, sandbox, mosquitto, MQTT_ONLY))
    assert mqtt_only(settings, load_buttons(settings.buttons.file))
    for macid in (MIXED, "Name, MAC-Address, topic\n"):  # a network button; none yet
        (tmp_path / "MACID.csv").write_text(macid)
        assert not mqtt_only(settings, load_buttons(settings.buttons.file))
    (tmp_path / "MACID.csv").write_text(MQTT_ONLY)
    inventory = load_settings(sandbox_config(tmp_path, sandbox, tmp_path / "MACID.csv",
                                             source="both"))
    assert not mqtt_only(inventory, load_buttons(inventory.buttons.file))


def test_frame_source_uses_the_registry_it_is_given(tmp_path: Path, sandbox: Sandbox,
                                                   mosquitto: Mosquitto) -> None:
    """`run` reads MACID.csv once (issue 16) and hands it to frame_source: the file is not read
    again, so a file that now lists a network-join button changes nothing."""
    settings = load_settings(write_config(tmp_path, sandbox, mosquitto, MQTT_ONLY))
    registry = load_buttons(settings.buttons.file)
    (tmp_path / "MACID.csv").write_text(MIXED)
    source = frame_source(settings, None, registry)
    assert isinstance(source, NoCapture)
    source.stop()


def test_no_capture_ends_on_stop_and_says_a_reload_with_a_network_button_needs_a_restart(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dashkanban")
    settings = load_settings(write_config(tmp_path, sandbox, mosquitto, MQTT_ONLY))
    source = frame_source(settings, None)
    assert isinstance(source, NoCapture)
    # A reload that keeps MQTT buttons only: nothing to say (the candidate program, 0 MACs).
    assert source.set_filter(kernel_programs(settings, load_buttons(settings.buttons.file))) is None
    (tmp_path / "MACID.csv").write_text(MIXED)
    assert source.set_filter(kernel_programs(settings, load_buttons(settings.buttons.file))) is None
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "MACID.csv now lists 1 network-join button(s) (without a topic); `run` started with MQTT "
        "buttons only and opened no capture socket: restart it (systemctl restart dashkanban) "
        "to catch their presses"]
    source.stop()
    assert list(source.frames()) == []


def test_check_says_capture_is_not_needed_without_cap_net_raw(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto
) -> None:
    config = write_config(tmp_path, sandbox, mosquitto, MQTT_ONLY)
    done = subprocess.run([*without_net_raw(), sys.executable, "-m", "dashkanban", "check", "-c",
                           str(config)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[1:3] == [
        f"✓ buttons {tmp_path / 'MACID.csv'}: 2 button(s)",
        "✓ capture: not needed, every button is an MQTT button (`run` opens no raw socket and "
        "needs no CAP_NET_RAW)",
    ]
    assert lines[-1] == "✓ all checks passed: events go to 127.0.0.1 in gateway mode"


def test_dashkanban_run_with_mqtt_buttons_only_without_cap_net_raw(
    tmp_path: Path, sandbox: Sandbox, mosquitto: Mosquitto
) -> None:
    """The real `dashkanban run` command, CAP_NET_RAW dropped: it starts, delivers an MQTT
    press, and stops with 0 on SIGTERM."""
    config = write_config(tmp_path, sandbox, mosquitto, MQTT_ONLY)
    log = tmp_path / "run.log"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with log.open("wb") as err:
        process = subprocess.Popen(
            [*without_net_raw(), sys.executable, "-m", "dashkanban", "run", "-c", str(config),
             "--allow-root"], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)
    try:
        wait_until(lambda: "listening to 2 MQTT button topic(s)" in log.read_text()
                   or process.poll() is not None, "the button broker", timeout=20)
        assert process.poll() is None, log.read_text()
        publish(mosquitto, [(TASMOTA, b'{"Button1":{"Action":"DOUBLE"}}', False)])
        wait_until(lambda: len(events(sandbox)) == 1, "the Tasmota press", timeout=20)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert events(sandbox) == [("c8y_MAC_Event", "tasmota double (mqtt)")]
    text = log.read_text()
    assert "is an MQTT button: no network capture (no raw socket, CAP_NET_RAW not needed)" in text
    assert "capturing on" not in text
