"""`dashkanban sandbox` as a real process: banner, logging, persistence, clean stop on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt

from tests.brokers import TlsFiles

BANNER_END = "Ctrl-C stops it."


@contextmanager
def running(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashkanban", "sandbox", "--mqtt-port", "0", "--http-port", "0",
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        assert proc.stdout is not None
        for _ in range(40):  # bounded: the banner has about 20 lines
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.strip() == BANNER_END:
                break
        text = "\n".join(lines)
        found = {
            "mqtt": re.search(r"MQTT +mqtts?://127\.0\.0\.1:(\d+)", text),
            "rest": re.search(r"REST +(http://127\.0\.0\.1:\d+)", text),
            "password": re.search(r"password +(\S+)", text),
        }
        assert all(found.values()), text
        info = {k: v.group(1) for k, v in found.items() if v is not None}
        info["banner"] = text
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=15)
    return proc.returncode, stderr


def test_banner_messages_persistence_and_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "sandbox.json"
    with running("--data", str(data), "--tenant", "t777", "--user", "me") as (proc, info):
        banner = info["banner"]
        assert "  user      t777/me" in banner
        assert "  tenant = 127.0.0.1" in banner
        assert "  tls = no\n  allow_insecure = yes" in banner
        assert f"  port = {info['mqtt']}" in banner
        assert f"  rest_url = {info['rest']}" in banner
        password = info["password"]
        assert len(password) >= 12
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-cli")
        client.username_pw_set("t777/me", password)
        client.connect("127.0.0.1", int(info["mqtt"]))
        client.loop_start()
        try:
            client.publish("s/us", "100,CLI gateway\n400,c8y_MAC_Event,from the CLI test",
                           qos=1).wait_for_publish(20)
        finally:
            client.disconnect()
            client.loop_stop()
        code, stderr = stop(proc)
    assert code == 0
    assert "gw-cli -> s/us 100,CLI gateway" in stderr  # each message is logged
    assert "sandbox stopped" in stderr
    assert password not in stderr
    assert data.stat().st_mode & 0o777 == 0o600
    # A second run over the same file still knows the device and its event.
    with running("--data", str(data), "--password", "given-pw") as (proc, info):
        assert "(the one given with --password)" in info["banner"]
        assert "given-pw" not in info["banner"]
        events = httpx.get(f"{info['rest']}/event/events", auth=("t12345/admin", "given-pw"),
                           timeout=5).json()["events"]
        assert [e["text"] for e in events] == ["from the CLI test"]
        code, _ = stop(proc)
    assert code == 0


def test_tls(tls_files: TlsFiles) -> None:
    with running("--tls-cert", str(tls_files.server_cert), "--tls-key",
                 str(tls_files.server_key)) as (proc, info):
        assert f"MQTT      mqtts://127.0.0.1:{info['mqtt']}" in info["banner"]
        assert "  tls = yes\n  rest_url" in info["banner"]
        connacks: list[str] = []
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-tls")
        client.username_pw_set("t12345/admin", info["password"])
        client.tls_set(ca_certs=str(tls_files.ca_cert))
        client.on_connect = lambda c, u, f, reason, p: connacks.append(str(reason))
        client.connect("localhost", int(info["mqtt"]))
        client.loop_start()
        try:
            client.publish("s/us", "100,TLS gateway", qos=1).wait_for_publish(20)
        finally:
            client.disconnect()
            client.loop_stop()
        code, stderr = stop(proc)
    assert (code, connacks) == (0, ["Success"])
    assert "gw-tls -> s/us 100,TLS gateway" in stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dashkanban", "sandbox", "--tls-cert", str(tmp_path / "c.pem")],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (
        2, "error: --tls-cert and --tls-key go together: give both or neither"
    )


def test_a_corrupt_data_file_is_one_line_and_kept(tmp_path: Path) -> None:
    data = tmp_path / "sandbox.json"
    data.write_text("{not json")
    result = subprocess.run(
        [sys.executable, "-m", "dashkanban", "sandbox", "--mqtt-port", "0", "--http-port", "0",
         "--data", str(data)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot read the sandbox data file {data}: ")
    assert data.read_text() == "{not json"  # nothing lost


def test_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with running() as (proc, info):
        result = subprocess.run(
            [sys.executable, "-m", "dashkanban", "sandbox", "--mqtt-port", info["mqtt"],
             "--http-port", "0"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        stop(proc)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: the sandbox cannot listen: ")
