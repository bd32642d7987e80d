"""`dashkanban check` and `test-button` run as the CLI against a real mosquitto over TLS."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from cryptography import x509

from tests.brokers import Mosquitto, TlsFiles, free_port, make_tls_files
from tests.c8y.support import Recorder, write_config
from tests.conftest import BROKER_PASSWORD, BROKER_USER, _need_mosquitto


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dashkanban", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def expiry(cert: Path) -> str:
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    return loaded.not_valid_after_utc.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


PLAIN_CSV = "Name, MAC-Address\ndashButton_1, ac:63:be:12:34:56\ndashButton_2, FC-A6-67-0A-0B-0C\n"


def capture_line() -> str:
    """The capture step as this machine answers it (check runs it for `run`'s sake)."""
    from dashkanban.capture.live import default_interface

    return f"✓ capture on {default_interface()} (interface = auto: the default route's): " \
        "CAP_NET_RAW held"


def test_check_all_pass(tmp_path: Path, mosquitto_tls: Mosquitto, tls_files: TlsFiles) -> None:
    buttons = tmp_path / "plain.csv"  # no bins: nothing uses REST, so check does not try it
    buttons.write_text(PLAIN_CSV)
    config = write_config(tmp_path, mosquitto_tls, buttons=buttons)
    result = run("check", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"✓ config {config}",
        f"✓ buttons {buttons}: 2 button(s)",
        capture_line(),
        f"✓ outbox {tmp_path / 'outbox.sqlite3'}: writable",
        "✓ resolve 127.0.0.1: 127.0.0.1",
        f"✓ connect 127.0.0.1:{mosquitto_tls.port}",
        f"✓ TLS TLSv1.3: certificate commonName=localhost, valid until "
        f"{expiry(tls_files.server_cert)}, issued by commonName=dashkanban test CA",
        "✓ MQTT login as t12345/dash-gateway, client id dashkanban-gw-01",
        "✓ all checks passed: events go to 127.0.0.1 in gateway mode",
    ]
    # check publishes nothing: the broker saw one client connect and leave, no PUBLISH
    assert "dashkanban-gw-01" in mosquitto_tls.log_text()


def plain_buttons(folder: Path) -> Path:
    """A MACID.csv without bins: nothing uses REST, which mosquitto does not have."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plain.csv"
    path.write_text(PLAIN_CSV)
    return path


def test_check_wrong_password(tmp_path: Path, mosquitto_tls: Mosquitto) -> None:
    config = write_config(tmp_path, mosquitto_tls, password="wrong",
                          buttons=plain_buttons(tmp_path))
    result = run("check", "-c", str(config))
    port = mosquitto_tls.port
    message = (f"127.0.0.1:{port} refused the login for t12345/dash-gateway: not authorised "
               "(CONNACK 5); check user and password in [C8YMQTT] and that the user may connect "
               "devices (with a certificate: that its CN equals [gateway] "
               "serial and the tenant trusts its CA)")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-2:] == [
        f"✗ MQTT login: {message}",
        "  hint: check user and password in [C8YMQTT] and that the user may connect devices "
        "(with a certificate: that its CN equals [gateway] "
        "serial and the tenant trusts its CA)",
    ]
    # Printed once (issue 14): the last line sums up instead of repeating it.
    assert result.stderr.splitlines()[-1] == (
        "error: check: 1 step failed (uplink); see the lines marked ✗ above")
    assert message not in result.stderr


SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture
def foreign_ca() -> Path:
    """CAs that did not sign the broker's certificate: the system's public ones."""
    if not SYSTEM_CAS.exists():
        pytest.skip("no system CA bundle")
    return SYSTEM_CAS


def test_check_untrusted_certificate(tmp_path: Path, mosquitto_tls: Mosquitto,
                                     foreign_ca: Path) -> None:
    config = write_config(tmp_path / "cfg", mosquitto_tls, ca_file=foreign_ca,
                          buttons=plain_buttons(tmp_path))
    result = run("check", "-c", str(config))
    assert result.returncode == 1
    assert result.stdout.splitlines()[-2:] == [
        "✗ TLS: the server certificate is not trusted (self-signed certificate in certificate "
        "chain)",
        "  hint: set [C8YMQTT] ca_file to the CA bundle that signed it",
    ]
    assert result.stderr.splitlines()[-1] == (
        "error: check: 1 step failed (uplink); see the lines marked ✗ above")


@pytest.fixture
def mosquitto_other_name(tmp_path: Path) -> Iterator[Mosquitto]:
    """TLS with a certificate for `otherhost.example` and 127.0.0.1, but not `localhost`."""
    _need_mosquitto()
    tls = make_tls_files(tmp_path / "tls-other", server_names=("otherhost.example",))
    broker = Mosquitto(tmp_path / "mosquitto-other", free_port(), tls=tls,
                       users={BROKER_USER: BROKER_PASSWORD})
    broker.start()
    yield broker
    broker.stop()


def test_check_wrong_host_name(tmp_path: Path, mosquitto_other_name: Mosquitto) -> None:
    config = write_config(tmp_path / "cfg", mosquitto_other_name, host="localhost",
                          buttons=plain_buttons(tmp_path))
    result = run("check", "-c", str(config))
    assert result.returncode == 1
    what = ("the server certificate is not valid for 'localhost' (Hostname mismatch, certificate "
            "is not valid for 'localhost'.)")
    assert result.stdout.splitlines()[-2:] == [
        f"✗ TLS: {what}",
        "  hint: set [C8YMQTT] tenant to a host name the certificate lists",
    ]
    assert result.stderr.splitlines()[-1] == (
        "error: check: 1 step failed (uplink); see the lines marked ✗ above")


def test_check_config_error_exits_2(tmp_path: Path, mosquitto_tls: Mosquitto) -> None:
    config = write_config(tmp_path, mosquitto_tls, extra="[gateway2]\n")
    result = run("check", "-c", str(config))
    assert result.returncode == 2
    line = f"{config}:14: unknown section [gateway2] (did you mean 'gateway'?)"
    # Printed once (issue 14): the error line every command prints for a config error.
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {line}"]


def test_check_tries_rest_when_bins_use_it(tmp_path: Path, mosquitto_tls: Mosquitto) -> None:
    """MACID.csv has bins, so the daemon writes c8y_Kanban over REST: check tries it too, and a
    dead rest_url fails the check instead of passing it (issue 14)."""
    config = write_config(tmp_path, mosquitto_tls, extra="")
    text = config.read_text().replace("[gateway]", "rest_url = http://127.0.0.1:9\n[gateway]")
    config.write_text(text)
    result = run("check", "-c", str(config))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[-3] == "✓ MQTT login as t12345/dash-gateway, client id dashkanban-gw-01"
    assert lines[-2].startswith("✗ REST http://127.0.0.1:9: REST check: cannot reach Cumulocity: ")
    assert lines[-1] == ("  hint: check [C8YMQTT] rest_url (default https://<tenant>) and the "
                         "credentials")
    assert result.stderr.splitlines()[-1] == (
        "error: check: 1 step failed (REST); see the lines marked ✗ above")


def test_test_button_delivers(tmp_path: Path, mosquitto_tls: Mosquitto,
                              tls_files: TlsFiles) -> None:
    recorder = Recorder(mosquitto_tls, tls_files)
    try:
        config = write_config(tmp_path, mosquitto_tls)
        result = run("test-button", "-c", str(config), "dashButton_2", "--timeout", "20")
        assert result.returncode == 0, result.stderr
        first, second = result.stdout.splitlines()
        assert first.startswith(
            "✓ s/us/fca6670a0b0c 400,c8y_MAC_Event,dashButton_2 pressed (fc:a6:67:0a:0b:0c),20"
        )
        assert second.startswith("✓ acknowledged by 127.0.0.1 (PUBACK) after ")
        messages = recorder.wait_for(6)
        assert [t for t, _ in messages] == ["s/us"] * 5 + ["s/us/fca6670a0b0c"]
        assert messages[4] == ("s/us", "101,fca6670a0b0c,dashButton_2,c8y_DashButton")
        assert messages[5][1] == first.split(" ", 2)[2]
    finally:
        recorder.close()


def test_test_button_wrong_password(tmp_path: Path, mosquitto_tls: Mosquitto) -> None:
    config = write_config(tmp_path, mosquitto_tls, password="wrong")
    result = run("test-button", "-c", str(config), "dashButton_1", "--timeout", "20")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: 127.0.0.1:{mosquitto_tls.port} refused the login for t12345/dash-gateway: not "
        "authorised (CONNACK 5); check user and password in [C8YMQTT] and that the user may "
        "connect devices (with a certificate: that its CN equals [gateway] "
        "serial and the tenant trusts its CA)"
        f"; 1 event stays queued in {tmp_path / 'outbox.sqlite3'}: "
        "`dashkanban outbox flush` delivers it, `dashkanban outbox drop --all` (or --button "
        "NAME|MAC, --before TIME) discards it"
    )


def test_test_button_untrusted_certificate(tmp_path: Path, mosquitto_tls: Mosquitto,
                                           foreign_ca: Path) -> None:
    config = write_config(tmp_path / "cfg", mosquitto_tls, ca_file=foreign_ca)
    result = run("test-button", "-c", str(config), "dashButton_1", "--timeout", "20")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: TLS to 127.0.0.1:{mosquitto_tls.port} failed: the server certificate is not "
        "trusted (self-signed certificate in certificate chain); set [C8YMQTT] ca_file to the CA "
        "bundle that signed it"
        f"; 1 event stays queued in {tmp_path / 'cfg' / 'outbox.sqlite3'}: "
        "`dashkanban outbox flush` delivers it, `dashkanban outbox drop --all` (or --button "
        "NAME|MAC, --before TIME) discards it"
    )


def test_test_button_wrong_host_name(tmp_path: Path, mosquitto_other_name: Mosquitto) -> None:
    config = write_config(tmp_path / "cfg", mosquitto_other_name, host="localhost")
    result = run("test-button", "-c", str(config), "dashButton_1", "--timeout", "20")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: TLS to localhost:{mosquitto_other_name.port} failed: the server certificate is "
        "not valid for 'localhost' (Hostname mismatch, certificate is not valid for "
        "'localhost'.); set [C8YMQTT] tenant to a host name the certificate lists"
        f"; 1 event stays queued in {tmp_path / 'cfg' / 'outbox.sqlite3'}: "
        "`dashkanban outbox flush` delivers it, `dashkanban outbox drop --all` (or --button "
        "NAME|MAC, --before TIME) discards it"
    )


def test_test_button_broker_down_exits_3(tmp_path: Path, mosquitto_tls: Mosquitto) -> None:
    config = write_config(tmp_path, mosquitto_tls)
    mosquitto_tls.stop()
    # 2 s: the first attempt (TLS context, refused connect) must have failed by then, on a
    # loaded machine too (its error is in the message).
    result = run("test-button", "-c", str(config), "dashButton_1", "--timeout", "2")
    assert result.returncode == 3
    assert result.stderr.splitlines()[-1] == (
        "error: not delivered within 2 s (cannot connect to "
        f"127.0.0.1:{mosquitto_tls.port}: Connection refused)"
        f"; 1 event stays queued in {tmp_path / 'outbox.sqlite3'}: "
        "`dashkanban outbox flush` delivers it, `dashkanban outbox drop --all` (or --button "
        "NAME|MAC, --before TIME) discards it"

    )


def test_test_button_unknown_button_exits_2(tmp_path: Path, mosquitto_tls: Mosquitto) -> None:
    config = write_config(tmp_path, mosquitto_tls)
    result = run("test-button", "-c", str(config), "nope")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"error: no button 'nope' in {tmp_path / 'MACID.csv'} (give its Name or MAC)"
    )


def test_check_finds_an_unwritable_outbox_and_goes_on(tmp_path: Path,
                                                      mosquitto_tls: Mosquitto) -> None:
    """Issue 14: check passed with an outbox nobody could write. It fails the step, runs the
    rest, and sums up once."""
    from tests.faults import read_only_filesystem

    buttons = tmp_path / "plain.csv"
    buttons.write_text(PLAIN_CSV)
    with read_only_filesystem(tmp_path / "ro", lambda folder: None) as folder:
        config = write_config(tmp_path, mosquitto_tls, buttons=buttons,
                              outbox=folder / "state" / "outbox.sqlite3")
        result = run("check", "-c", str(config))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[3:5] == [
        f"✗ outbox {folder / 'state' / 'outbox.sqlite3'}: the folder {folder} is read-only "
        "(SQLite writes its -wal and -shm files there)",
        "  hint: make it writable for the user that runs dashkanban, or set [outbox] path",
    ]
    assert lines[-1] == "✓ MQTT login as t12345/dash-gateway, client id dashkanban-gw-01"
    assert result.stderr.splitlines() == [
        "error: check: 1 step failed (outbox); see the lines marked ✗ above"]
