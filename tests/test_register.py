"""`dashkanban register` against the sandbox and against a plain mosquitto with a test responder
playing the platform's part; then the stored credentials are what every command logs in with."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from dashkanban import credentials
from dashkanban.cli import main
from dashkanban.commands import register
from dashkanban.config import load_settings
from dashkanban.errors import ConfigError
from dashkanban.sandbox import Sandbox
from tests.brokers import Mosquitto, free_port
from tests.c8y.support import BUTTONS_CSV
from tests.conftest import _need_mosquitto
from tests.sandbox_fixture import (
    BOOTSTRAP_PASSWORD,
    SANDBOX_TENANT,
    WAIT,
    sandbox_bootstrap,
)

__all__ = ["sandbox_bootstrap"]  # the fixture

SERIAL = "dashkanban-gw-01"
INTERVAL = 0.05  # instead of 5 s between two requests on s/ucr


@pytest.fixture(autouse=True)
def _short_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(register, "REQUEST_INTERVAL", INTERVAL)
    monkeypatch.delenv("DASHKANBAN_PASSWORD", raising=False)
    monkeypatch.delenv("DASHKANBAN_BOOTSTRAP_PASSWORD", raising=False)


def write_config(folder: Path, port: int, *, bootstrap_password: str | None = BOOTSTRAP_PASSWORD,
                 login: str = "", tenant_id: str = "", rest_url: str = "") -> Path:
    """A config.ini (0600) for plain MQTT on loopback with no user or password."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MACID.csv").write_text(BUTTONS_CSV)
    lines = ["[C8YMQTT]", "tenant = 127.0.0.1", f"port = {port}", "tls = no",
             "allow_insecure = yes"]
    if tenant_id:
        lines.append(f"tenantID = {tenant_id}")
    if rest_url:
        lines.append(f"rest_url = {rest_url}")
    if bootstrap_password is not None:
        lines.append(f"bootstrap_password = {bootstrap_password}")
    lines += [login, "[gateway]", f"serial = {SERIAL}", "name = Store 3 button gateway",
              "[outbox]", f"path = {folder / 'state' / 'outbox.sqlite3'}"]
    path = folder / "config.ini"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def own(stderr: str) -> list[str]:
    """The lines of stderr that are dashkanban's, not the in-process sandbox's log."""
    return [line for line in stderr.splitlines() if "dashkanban.sandbox" not in line]


def stored(config: Path) -> Path:
    return config.parent / "state" / "credentials"


def instructions(tenant: str = "127.0.0.1", timeout: str = "600") -> list[str]:
    return [
        f"Waiting up to {timeout} s for {tenant} to accept this gateway (serial {SERIAL}).",
        "To accept it, in Cumulocity's Device Management open Devices > Registration, click",
        f"Register device > General, enter the device ID {SERIAL} and click Next; when it shows",
        '"Pending acceptance", click Accept.',
    ]


class Operator(threading.Thread):
    """Registers the serial in the sandbox and accepts it once it is pending (bounded)."""

    def __init__(self, sandbox: Sandbox, *, accept: bool = True) -> None:
        super().__init__(daemon=True)
        self.sandbox = sandbox
        self.accept = accept
        sandbox.register_device(SERIAL)

    def run(self) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.sandbox.registration_status(SERIAL) == "PENDING_ACCEPTANCE":
                if self.accept:
                    self.sandbox.accept_device(SERIAL)
                return
            time.sleep(0.02)


def test_register_with_the_sandbox_then_test_button(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], sandbox_bootstrap: Sandbox) -> None:
    sandbox = sandbox_bootstrap
    assert sandbox.mqtt_port is not None
    config = write_config(tmp_path, sandbox.mqtt_port, rest_url=sandbox.http_url)
    operator = Operator(sandbox)
    operator.start()
    # At debug level too: paho, aiomqtt and the sandbox log every packet then.
    assert main(["--log-level", "debug", "register", "-c", str(config)]) == 0
    operator.join()
    out, err = capfd.readouterr()
    target = stored(config)
    user = f"{SANDBOX_TENANT}/device_{SERIAL}"
    assert out.splitlines() == [*instructions(), f"✓ accepted: this gateway logs in as {user}",
                                f"✓ stored in {target} (mode 0600)"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    found = credentials.read(target)
    assert found is not None
    assert found.username == user
    password = found.password.reveal()
    outputs = [out, err]

    # Every command now logs in with them: test-button delivers its event.
    assert main(["--log-level", "debug", "test-button", "-c", str(config), "dashButton_1",
                 "--timeout", "10"]) == 0
    events = sandbox.events("ac63be123456")
    assert [e["text"] for e in events] == ["dashButton_1 pressed (ac:63:be:12:34:56)"]
    assert sandbox.device(SERIAL) is not None
    # check says which credentials it used, never the password.
    assert main(["--log-level", "debug", "check", "-c", str(config)]) == 0
    out, err = capfd.readouterr()
    outputs += [out, err]
    assert (f"✓ MQTT login as {user} (device credentials from {target}), client id {SERIAL}"
            in out.splitlines())
    for text in outputs:
        assert password not in text
        assert BOOTSTRAP_PASSWORD not in text


def test_timeout_is_exit_3_with_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                         sandbox_bootstrap: Sandbox) -> None:
    assert sandbox_bootstrap.mqtt_port is not None
    config = write_config(tmp_path, sandbox_bootstrap.mqtt_port)
    operator = Operator(sandbox_bootstrap, accept=False)
    operator.start()
    # 2 s: the connect, the subscription and the first request must be done within it, on a
    # loaded machine too (the instructions and PENDING_ACCEPTANCE below come from them).
    assert main(["register", "-c", str(config), "--timeout", "2"]) == 3
    operator.join()
    out, err = capfd.readouterr()
    assert out.splitlines() == instructions(timeout="2")
    assert own(err) == [
        f"error: not accepted within 2 s: register and accept the serial {SERIAL} in Device "
        "Management > Registration, then run `dashkanban register` again"]
    assert sandbox_bootstrap.registration_status(SERIAL) == "PENDING_ACCEPTANCE"
    assert not stored(config).exists()
    assert BOOTSTRAP_PASSWORD not in out + err


def test_a_lost_connection_is_made_again(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                         sandbox_bootstrap: Sandbox) -> None:
    sandbox = sandbox_bootstrap
    assert sandbox.mqtt_port is not None
    config = write_config(tmp_path, sandbox.mqtt_port)
    sandbox.register_device(SERIAL)

    def operator() -> None:
        deadline = time.monotonic() + WAIT
        while sandbox.registration_status(SERIAL) != "PENDING_ACCEPTANCE":
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        assert sandbox.drop_connection(SERIAL)
        while sandbox.stats()["connections"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        sandbox.accept_device(SERIAL)

    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    assert main(["register", "-c", str(config), "--timeout", "10"]) == 0
    thread.join()
    out, err = capfd.readouterr()
    assert out.splitlines()[:4] == instructions(timeout="10")  # printed once only
    assert out.splitlines()[4:] == [
        f"✓ accepted: this gateway logs in as {SANDBOX_TENANT}/device_{SERIAL}",
        f"✓ stored in {stored(config)} (mode 0600)"]
    lost = [line for line in own(err) if "lost" in line]
    assert len(lost) == 1
    assert (f"dashkanban.commands.register: connection to 127.0.0.1:{sandbox.mqtt_port} lost ("
            in lost[0])
    assert lost[0].endswith("); connecting again in 0.05 s")


def test_wrong_bootstrap_password_is_one_line_exit_1(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], sandbox_bootstrap: Sandbox) -> None:
    assert sandbox_bootstrap.mqtt_port is not None
    config = write_config(tmp_path, sandbox_bootstrap.mqtt_port, bootstrap_password="Wr0ng-pw")
    assert main(["register", "-c", str(config), "--timeout", "5"]) == 1
    out, err = capfd.readouterr()
    assert out == ""
    assert own(err) == [
        f"error: 127.0.0.1:{sandbox_bootstrap.mqtt_port} refused the bootstrap login as "
        "management/devicebootstrap: bad user name or password (CONNACK 4); check [C8YMQTT] "
        "bootstrap_password or $DASHKANBAN_BOOTSTRAP_PASSWORD"]
    assert "Wr0ng-pw" not in err


def test_bootstrap_password_from_the_environment(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        sandbox_bootstrap: Sandbox) -> None:
    assert sandbox_bootstrap.mqtt_port is not None
    config = write_config(tmp_path, sandbox_bootstrap.mqtt_port, bootstrap_password=None)
    monkeypatch.setenv("DASHKANBAN_BOOTSTRAP_PASSWORD", BOOTSTRAP_PASSWORD)
    operator = Operator(sandbox_bootstrap)
    operator.start()
    assert main(["register", "-c", str(config), "--timeout", "5"]) == 0
    operator.join()
    assert stored(config).exists()
    out, err = capfd.readouterr()
    assert BOOTSTRAP_PASSWORD not in out + err


@pytest.mark.parametrize(("login", "what"), [
    ("user = dash-gateway\npassword = pw", "a password (password, password_file or "
                                           "$DASHKANBAN_PASSWORD)"),
    ("user = dash-gateway\npassword_file = pw.txt", "a password (password, password_file or "
                                                    "$DASHKANBAN_PASSWORD)"),
    ("user = dash-gateway\ncert_file = gw.pem\nkey_file = gw.key",
     "a client certificate (cert_file)"),
])
def test_refused_when_the_config_has_a_login(tmp_path: Path, login: str, what: str,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, free_port(), login=login, tenant_id=SANDBOX_TENANT)
    (tmp_path / "pw.txt").write_text("pw\n")
    (tmp_path / "pw.txt").chmod(0o600)
    assert main(["register", "-c", str(config)]) == 2
    out, err = capfd.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"error: {config}: [C8YMQTT] already has {what}; remove it to use device credentials, "
        "or give --force to register anyway"]


def test_refused_when_credentials_are_stored(tmp_path: Path,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, free_port())
    target = stored(config)
    credentials.write(target, credentials.parse("user = t1/device_x\npassword = p\n", target),
                      _now())
    assert main(["register", "-c", str(config)]) == 2
    assert capfd.readouterr().err.splitlines() == [
        f"error: {target} already holds the credentials of t1/device_x; --force replaces them"]


def test_no_bootstrap_password(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, free_port(), bootstrap_password=None)
    assert main(["register", "-c", str(config)]) == 2
    assert capfd.readouterr().err.splitlines() == [
        f"error: {config}: no bootstrap password: set [C8YMQTT] bootstrap_password or "
        "$DASHKANBAN_BOOTSTRAP_PASSWORD (Cumulocity's support hands it out)"]


def test_unreachable_broker_is_one_line_exit_1(tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    assert main(["register", "-c", str(config), "--timeout", "5"]) == 1
    assert capfd.readouterr().err.splitlines() == [
        f"error: cannot connect to 127.0.0.1:{port}: [Errno 111] Connection refused"]


def test_a_command_without_credentials_names_register(tmp_path: Path,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, free_port())
    assert main(["test-button", "-c", str(config), "dashButton_1"]) == 2
    assert capfd.readouterr().err.splitlines() == [
        f"error: {config}:1: no login: [C8YMQTT] has no user, password or cert_file, and "
        f"{stored(config)} does not exist; run `dashkanban register` (or set user and password)"]


def test_stored_tenant_must_match_tenant_id(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), tenant_id="t999")
    target = stored(config)
    credentials.write(target, credentials.parse("user = t1/device_x\npassword = p\n", target),
                      _now())
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {})
    assert str(caught.value) == (
        f"{config}:6: tenantID = t999, but {target} holds credentials for tenant t1")


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# A plain mosquitto, and a test responder playing the platform's part

DEVICE_USER = "t777/device_gw"
DEVICE_PASSWORD = "dev,pw-with,commas"  # unquoted commas in a 70 line stay in the password
RESPONDER = ("responder", "responder-pw")


@pytest.fixture
def platform_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    _need_mosquitto()
    broker = Mosquitto(tmp_path / "mosquitto", free_port(), users={
        "management/devicebootstrap": BOOTSTRAP_PASSWORD, DEVICE_USER: DEVICE_PASSWORD,
        RESPONDER[0]: RESPONDER[1]})
    broker.start()
    yield broker
    broker.stop()


class Responder:
    """Answers the second request on s/ucr with `70` (the first stands for "pending"), and
    records what arrives on s/us."""

    def __init__(self, broker: Mosquitto) -> None:
        self.requests = 0
        self.uplink: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-responder",
                                  protocol=paho.MQTTv311)
        self.client.username_pw_set(*RESPONDER)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe([("s/ucr", 1), ("s/us", 1), ("s/us/#", 1)])
        assert subscribed.wait(WAIT)

    def _on_message(self, client: paho.Client, userdata: object,
                    message: paho.MQTTMessage) -> None:
        if message.topic == "s/ucr":
            self.requests += 1
            if self.requests == 2:
                tenant, user = DEVICE_USER.split("/")
                client.publish("s/dcr", f"70,{tenant},{user},{DEVICE_PASSWORD}", qos=1)
            return
        with self.lock:
            self.uplink.append((message.topic, message.payload.decode()))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_register_with_mosquitto_and_a_responder(
        tmp_path: Path, platform_broker: Mosquitto, capfd: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, platform_broker.port)
    responder = Responder(platform_broker)
    try:
        assert main(["register", "-c", str(config), "--timeout", "10"]) == 0
        target = stored(config)
        out, err = capfd.readouterr()
        assert out.splitlines() == [*instructions(timeout="10"),
                                    f"✓ accepted: this gateway logs in as {DEVICE_USER}",
                                    f"✓ stored in {target} (mode 0600)"]
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
        found = credentials.read(target)
        assert found is not None
        assert (found.username, found.password.reveal()) == (DEVICE_USER, DEVICE_PASSWORD)
        assert main(["test-button", "-c", str(config), "dashButton_2", "--timeout", "10"]) == 0
        out2, err2 = capfd.readouterr()
        deadline = time.monotonic() + WAIT
        while not any(t == "s/us/fca6670a0b0c" for t, _ in responder.uplink):
            assert time.monotonic() < deadline, responder.uplink
            time.sleep(0.02)
        with responder.lock:
            event = [p for t, p in responder.uplink if t == "s/us/fca6670a0b0c"]
        assert len(event) == 1
        assert event[0].startswith("400,c8y_MAC_Event,dashButton_2 pressed (fc:a6:67:0a:0b:0c),")
        assert responder.requests >= 2
    finally:
        responder.close()
    for text in (out, err, out2, err2):
        assert DEVICE_PASSWORD not in text
        assert BOOTSTRAP_PASSWORD not in text


def test_mosquitto_refuses_a_wrong_bootstrap_password(
        tmp_path: Path, platform_broker: Mosquitto, capfd: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, platform_broker.port, bootstrap_password="Wr0ng-pw")
    assert main(["register", "-c", str(config), "--timeout", "5"]) == 1
    assert capfd.readouterr().err.splitlines() == [
        f"error: 127.0.0.1:{platform_broker.port} refused the bootstrap login as "
        "management/devicebootstrap: not authorized (CONNACK 5); check [C8YMQTT] "
        "bootstrap_password or $DASHKANBAN_BOOTSTRAP_PASSWORD"]


def test_parse_credentials_line() -> None:
    parse = register.parse_credentials_line
    found = parse(b"70,t12345,device_gw,s3cret")
    assert found is not None
    assert (found.username, found.password.reveal()) == ("t12345/device_gw", "s3cret")
    quoted = parse(b'70,t1,device_gw,"a,""b"')
    assert quoted is not None
    assert quoted.password.reveal() == 'a,"b'
    for bad in (b"", b"71,t1,u,p", b"70,t1,u", b"70,,u,p", b"70,t1,u,", b"\xff70,t1,u,p"):
        assert parse(bad) is None
    assert "s3cret" not in repr(found)


def test_credentials_file_is_read_as_ssh_reads_a_key(tmp_path: Path) -> None:
    target = tmp_path / "credentials"
    assert credentials.read(target) is None
    credentials.write(target, credentials.parse("user = t1/device_x\npassword = p w\n", target),
                      _now())
    found = credentials.read(target)
    assert found is not None
    assert found.password.reveal() == "p w"
    target.chmod(0o640)
    with pytest.raises(ConfigError) as caught:
        credentials.read(target)
    assert str(caught.value) == (
        f"{target}: holds a password but is readable by group or others (mode 0640); fix it "
        f"with: chmod 600 {target}")
    target.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError) as caught:
        credentials.read(link)
    assert str(caught.value) == (
        f"{link}: is a symbolic link; the credentials file must be a regular file")
    big = tmp_path / "big"
    big.write_text("#" * 5000)
    big.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        credentials.read(big)
    assert str(caught.value) == f"{big}: is 5000 bytes; a credentials file has at most 4096"
    if os.geteuid() == 0:
        os.chown(target, 4243, -1)
    owner = os.stat(target).st_uid
    with pytest.raises(ConfigError) as caught:
        credentials.read(target, euid=4242)
    assert str(caught.value) == (
        f"{target}: is owned by uid {owner}, not by you (uid 4242) or root; fix it with: "
        f"chown 4242 {target}")
    with pytest.raises(ConfigError) as caught:
        credentials.parse("user = t1/device_x\npassword = secret-value\npassword = x\n", target)
    assert str(caught.value) == f"{target}:3: password given twice (first on line 2)"
    with pytest.raises(ConfigError) as caught:
        credentials.parse("user = device_x\npassword = p\n", target)
    assert str(caught.value) == f"{target}:1: user = device_x: expected tenantID/user"


# ---------------------------------------------------------------------------------------------
# service install carries the credentials into the service's state folder


def test_service_install_carries_the_credentials(tmp_path: Path,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    from tests.service_helpers import is_root, make_scratch_root, passwd_entry, tree

    if not is_root():
        pytest.skip("installing (useradd --root, chown) needs root")
    config = write_config(tmp_path / "site", 8883)
    # The bootstrap password, left in the config, is masked like a password in --dry-run.
    config.write_text(config.read_text().replace("tls = no\nallow_insecure = yes\n", ""))
    target = stored(config)
    secret_text = "user = t12345/device_gw\npassword = dev-s3cret\n"
    credentials.write(target, credentials.parse(secret_text, target), _now())
    root = make_scratch_root(tmp_path / "root")
    assert main(["service", "install", "-c", str(config), "--root", str(root), "--dry-run"]) == 0
    dry = capfd.readouterr().out
    assert "dev-s3cret" not in dry
    assert BOOTSTRAP_PASSWORD not in dry
    assert "bootstrap_password = ***" in dry
    assert main(["service", "install", "-c", str(config), "--root", str(root)]) == 0
    out, err = capfd.readouterr()
    assert "dev-s3cret" not in out + err
    user = passwd_entry(root, "dashkanban")
    assert user is not None
    uid, gid = int(user[2]), int(user[3])
    files = tree(root)
    assert files["var/lib/dashkanban"][:3] == (0o40750, uid, gid)
    assert files["var/lib/dashkanban/credentials"] == (
        0o100600, uid, gid, target.read_bytes())
    # The installed config names no login: the service reads that file.
    installed = files["etc/dashkanban/config.ini"][3].decode()
    assert "\npassword" not in installed
    assert "path = /var/lib/dashkanban/outbox.sqlite3" in installed


# ---------------------------------------------------------------------------------------------
# register --certificate: EST enrolment with the sandbox's certificate authority

ONE_TIME = "0ne-time-pw"


def test_certificate_enrolment_with_the_sandbox(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        sandbox_bootstrap: Sandbox) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    sandbox = sandbox_bootstrap
    assert sandbox.mqtt_port is not None
    config = write_config(tmp_path, sandbox.mqtt_port, bootstrap_password=None,
                          rest_url=sandbox.http_url)
    monkeypatch.setenv("DASHKANBAN_ONE_TIME_PASSWORD", ONE_TIME)
    sandbox.register_device(SERIAL, ONE_TIME)
    assert main(["register", "--certificate", "-c", str(config), "--timeout", "5"]) == 0
    out, err = capfd.readouterr()
    state = tmp_path / "state"
    key_path, cert_path = state / "device-key.pem", state / "device-cert.pem"
    leaf, ca = x509.load_pem_x509_certificates(cert_path.read_bytes())
    assert ca == x509.load_pem_x509_certificate(sandbox.ca_pem)
    leaf.verify_directly_issued_by(ca)
    assert leaf.subject.rfc4514_string() == f"CN={SERIAL}"
    assert out.splitlines() == [
        f"✓ certificate CN={SERIAL}, issued by {ca.subject.rfc4514_string()}, valid until "
        f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        f"✓ key in {key_path} (mode 0600), certificate in {cert_path}"]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == leaf.public_key()
    assert ONE_TIME not in out + err
    # Every command now logs in with the certificate.
    settings = load_settings(config, {})
    assert (settings.c8y.cert_file, settings.c8y.key_file) == (cert_path, key_path)
    assert settings.c8y.password is None
    # The one-time password is used up, and a second register needs --force.
    assert main(["register", "--certificate", "-c", str(config), "--timeout", "5"]) == 2
    assert own(capfd.readouterr().err) == [
        f"error: {cert_path} already holds this gateway's certificate; --force replaces it"]


def test_certificate_enrolment_wrong_one_time_password_times_out(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        sandbox_bootstrap: Sandbox) -> None:
    sandbox = sandbox_bootstrap
    assert sandbox.mqtt_port is not None
    config = write_config(tmp_path, sandbox.mqtt_port, bootstrap_password=None,
                          rest_url=sandbox.http_url)
    monkeypatch.setenv("DASHKANBAN_ONE_TIME_PASSWORD", "not-it")
    sandbox.register_device(SERIAL, ONE_TIME)
    assert main(["register", "--certificate", "-c", str(config), "--timeout", "0.3"]) == 3
    out, err = capfd.readouterr()
    assert out.splitlines() == [
        f"Waiting up to 0.3 s for the certificate authority of 127.0.0.1 to sign a certificate "
        f"for {SERIAL}.",
        f"Register the device ID {SERIAL} with a one-time password for the certificate "
        "authority in Device Management, and give the same password here "
        "($DASHKANBAN_ONE_TIME_PASSWORD)."]
    assert own(err)[-1] == (
        f"error: no certificate within 0.3 s: register {SERIAL} with a one-time password for "
        "the certificate authority, then run `dashkanban register --certificate` again (last "
        "answer: 401 no registration with this device ID and one-time password)")
    assert not (tmp_path / "state" / "device-key.pem").exists()
    assert "not-it" not in out + err


def test_parse_enrolled_reads_pem_and_pkcs7(tmp_path: Path) -> None:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    from dashkanban.c8y.est import parse_enrolled
    from tests.brokers import make_tls_files

    files = make_tls_files(tmp_path / "tls")
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(files.client_cert.read_bytes())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert parse_enrolled(pem) == [cert]
    der = pkcs7.serialize_certificates([cert], serialization.Encoding.DER)
    assert parse_enrolled(base64.encodebytes(der)) == [cert]
    assert parse_enrolled(b"not a certificate") == []


def test_service_install_carries_an_enrolled_certificate(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from tests.brokers import make_tls_files
    from tests.service_helpers import is_root, make_scratch_root, passwd_entry, tree

    if not is_root():
        pytest.skip("installing (useradd --root, chown) needs root")
    config = write_config(tmp_path / "site", 8883, bootstrap_password=None)
    config.write_text(config.read_text().replace("tls = no\nallow_insecure = yes\n", ""))
    files = make_tls_files(tmp_path / "tls")
    state = tmp_path / "site" / "state"
    state.mkdir(mode=0o700)
    (state / "device-key.pem").write_bytes(files.client_key.read_bytes())
    (state / "device-key.pem").chmod(0o600)
    (state / "device-cert.pem").write_bytes(files.client_cert.read_bytes())
    root = make_scratch_root(tmp_path / "root")
    assert main(["service", "install", "-c", str(config), "--root", str(root)]) == 0
    capfd.readouterr()
    user = passwd_entry(root, "dashkanban")
    assert user is not None
    uid, gid = int(user[2]), int(user[3])
    installed = tree(root)
    assert installed["var/lib/dashkanban/device-key.pem"] == (
        0o100600, uid, gid, files.client_key.read_bytes())
    assert installed["var/lib/dashkanban/device-cert.pem"] == (
        0o100644, uid, gid, files.client_cert.read_bytes())
    # Not copied to /etc/dashkanban, and the config does not name them: found in the state folder.
    assert not any(path.endswith(".pem") for path in installed if path.startswith("etc/"))
    assert "cert_file" not in installed["etc/dashkanban/config.ini"][3].decode()


def test_someone_elses_config_may_not_send_the_stored_credentials(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    config = write_config(tmp_path, free_port())
    target = stored(config)
    credentials.write(target, credentials.parse("user = t1/device_x\npassword = p\n", target),
                      _now())
    os.chown(config, 4243, -1)
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {})
    assert str(caught.value) == (
        f"{config}: sends the device credentials of {target} but belongs to uid 4243, not to "
        f"you or root; if you trust it, fix it with: sudo chown 0 {config}")
    # Under sudo, the invoking user's own config is fine.
    assert load_settings(config, {"SUDO_UID": "4243"}).c8y.username == "t1/device_x"
