"""`dashkanban register --renew`: EST simplereenroll against the sandbox's certificate authority.

The sandbox's TLS listener takes certificate logins from the CA it enrols with (its tenant CA) and
from `trusted_ca`; its `simplereenroll` is authenticated with the device token of `s/uat`.
"""

from __future__ import annotations

import http.server
import json
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dashkanban.c8y.est import renewal_due
from dashkanban.cli import main
from dashkanban.sandbox import Sandbox
from dashkanban.sandbox.registration import DeviceCredentials
from tests.brokers import TlsFiles, free_port
from tests.c8y.support import BUTTONS_CSV
from tests.sandbox_fixture import WAIT, Device, sandbox_options

SERIAL = "dashkanban-gw-01"


@pytest.fixture
def ca_sandbox(tls_files: TlsFiles) -> Iterator[Sandbox]:
    """MQTT over TLS with certificate logins, REST on plain HTTP."""
    options = sandbox_options(mqtts_port=0, tls_cert=tls_files.server_cert,
                              tls_key=tls_files.server_key, trusted_ca=tls_files.ca_cert)
    with Sandbox(options) as running:
        yield running


def write_config(folder: Path, sandbox: Sandbox, tls_files: TlsFiles, *,
                 rest_url: str | None = None) -> Path:
    """A config.ini with no login: the enrolled key and certificate in state/ are the login."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MACID.csv").write_text(BUTTONS_CSV)
    lines = ["[C8YMQTT]", "tenant = localhost", f"port = {sandbox.mqtts_port}", "tls = yes",
             f"ca_file = {tls_files.ca_cert}", f"rest_url = {rest_url or sandbox.http_url}",
             "[gateway]", f"serial = {SERIAL}", "name = Store 3 button gateway",
             "[outbox]", f"path = {folder / 'state' / 'outbox.sqlite3'}"]
    path = folder / "config.ini"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def enrolled_pair(sandbox: Sandbox, state: Path, *, days_left: float,
                  lifetime_days: float = 365) -> tuple[Path, Path, x509.Certificate]:
    """A key (0600) and a certificate from the sandbox's CA with `days_left` of its lifetime."""
    state.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERIAL)]))
           .sign(key, hashes.SHA256()))
    now = datetime.now(UTC)
    end = now + timedelta(days=days_left)
    cert: x509.Certificate = sandbox.call(lambda: sandbox.registrations.ca.sign(
        csr, not_before=end - timedelta(days=lifetime_days), not_after=end))
    key_path, cert_path = state / "device-key.pem", state / "device-cert.pem"
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + sandbox.ca_pem)
    return key_path, cert_path, cert


def own(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "dashkanban.sandbox" not in line]


def no_secret(text: str, key_path: Path) -> None:
    key_body = b"".join(key_path.read_bytes().splitlines()[1:-1]).decode()
    assert key_body not in text.replace("\n", "")
    assert "PRIVATE KEY" not in text
    assert "eyJ" not in text  # a JWT's header: {"alg":...


def test_a_certificate_close_to_expiry_is_renewed_and_logs_in(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], ca_sandbox: Sandbox,
        tls_files: TlsFiles) -> None:
    sandbox = ca_sandbox
    config = write_config(tmp_path, sandbox, tls_files)
    key_path, cert_path, old = enrolled_pair(sandbox, tmp_path / "state", days_left=10)
    key_before = key_path.read_bytes()
    assert main(["register", "--renew", "-c", str(config)]) == 0
    out, err = capfd.readouterr()
    leaf, ca = x509.load_pem_x509_certificates(cert_path.read_bytes())
    assert ca == x509.load_pem_x509_certificate(sandbox.ca_pem)
    leaf.verify_directly_issued_by(ca)
    assert leaf.subject.rfc4514_string() == f"CN={SERIAL}"
    assert leaf.serial_number != old.serial_number
    assert leaf.not_valid_after_utc > old.not_valid_after_utc + timedelta(days=300)
    assert out.splitlines() == [
        f"✓ certificate renewed: CN={SERIAL}, issued by {ca.subject.rfc4514_string()}, valid "
        f"until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        f"✓ same key in {key_path}, new certificate in {cert_path}; a running `dashkanban run` "
        "keeps the old one until it restarts: `sudo systemctl restart dashkanban` (a reload is "
        "not enough)"]
    assert own(err) == []
    # The key is the same (tedge's way), still 0600; the new certificate is for it.
    assert key_path.read_bytes() == key_before
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_before, None)
    assert leaf.public_key() == key.public_key()
    assert not list(cert_path.parent.glob(".*.new"))
    no_secret(out + err, key_path)
    assert sandbox.stats()["tokens"] == 1  # re-enrolment was authenticated with s/uat's JWT
    # The new certificate logs in over MQTT.
    device = Device(sandbox, SERIAL, username=None, tls=tls_files,
                    client_cert=(cert_path, key_path))
    try:
        assert device.connect() == "Success"
    finally:
        device.close()


def test_a_certificate_not_due_is_left_alone(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], ca_sandbox: Sandbox,
        tls_files: TlsFiles) -> None:
    sandbox = ca_sandbox
    config = write_config(tmp_path, sandbox, tls_files)
    _, cert_path, old = enrolled_pair(sandbox, tmp_path / "state", days_left=200)
    before = cert_path.read_bytes()
    assert main(["register", "--renew", "-c", str(config)]) == 0
    out, _ = capfd.readouterr()
    due = renewal_due(old)
    assert out.splitlines() == [
        f"✓ certificate valid until {old.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; renewal is due "
        f"from {due:%Y-%m-%d %H:%M} UTC, when a third of its lifetime is left; nothing to do "
        "(--force renews now)"]
    assert cert_path.read_bytes() == before
    assert sandbox.stats().get("tokens", 0) == 0
    # --force renews at once.
    assert main(["register", "--renew", "--force", "-c", str(config)]) == 0
    assert capfd.readouterr().out.startswith("✓ certificate renewed: ")
    assert cert_path.read_bytes() != before


def test_renewal_due_is_at_two_thirds_of_the_lifetime() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERIAL)])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(start + timedelta(days=300))
            .sign(key, hashes.SHA256()))
    assert renewal_due(cert) == start + timedelta(days=200)


@pytest.mark.parametrize("where", ["unreachable", "another tenant"])
def test_a_failed_renewal_keeps_the_old_pair_and_says_so_in_one_line(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], ca_sandbox: Sandbox,
        tls_files: TlsFiles, where: str) -> None:
    sandbox = ca_sandbox
    if where == "unreachable":
        rest_url = f"http://127.0.0.1:{free_port()}"
        other = None
    else:  # a sandbox whose token key differs: the JWT is refused with 401
        other = Sandbox(sandbox_options())
        other.start()
        rest_url = other.http_url
    try:
        config = write_config(tmp_path, sandbox, tls_files, rest_url=rest_url)
        key_path, cert_path, _ = enrolled_pair(sandbox, tmp_path / "state", days_left=10)
        key_before, cert_before = key_path.read_bytes(), cert_path.read_bytes()
        assert main(["register", "--renew", "-c", str(config)]) == 1
        out, err = capfd.readouterr()
    finally:
        if other is not None:
            other.stop()
    url = f"{rest_url}/.well-known/est/simplereenroll"
    why = (f"cannot reach {url}: ConnectError" if where == "unreachable" else
           f"{url} answered 401 Invalid or expired token")
    assert out == ""
    assert own(err) == [f"error: certificate not renewed: {why}; the current certificate stays "
                        f"in {cert_path}"]
    assert (key_path.read_bytes(), cert_path.read_bytes()) == (key_before, cert_before)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert not list(cert_path.parent.glob(".*.new"))
    no_secret(out + err, key_path)


def test_an_expired_certificate_needs_a_new_enrolment(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], ca_sandbox: Sandbox,
        tls_files: TlsFiles) -> None:
    sandbox = ca_sandbox
    config = write_config(tmp_path, sandbox, tls_files)
    _, cert_path, old = enrolled_pair(sandbox, tmp_path / "state", days_left=-1)
    before = cert_path.read_bytes()
    assert main(["register", "--renew", "-c", str(config)]) == 1
    assert own(capfd.readouterr().err) == [
        f"error: certificate not renewed: it expired on {old.not_valid_after_utc:%Y-%m-%d %H:%M} "
        "UTC and can no longer log in for a device token; enrol again with a new one-time "
        "password (`dashkanban register --certificate --force`)"]
    assert cert_path.read_bytes() == before


def test_renew_without_a_certificate_names_register_certificate(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], ca_sandbox: Sandbox,
        tls_files: TlsFiles) -> None:
    config = write_config(tmp_path, ca_sandbox, tls_files)
    assert main(["register", "--renew", "-c", str(config)]) == 2
    assert own(capfd.readouterr().err) == [
        f"error: {config}: no certificate to renew: [C8YMQTT] has no cert_file and key_file and "
        "no certificate is enrolled; run `dashkanban register --certificate` first"]


def test_sandbox_simplereenroll_is_for_devices_only(ca_sandbox: Sandbox) -> None:
    sandbox = ca_sandbox
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERIAL)]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    url = f"{sandbox.http_url}/.well-known/est/simplereenroll"
    headers = {"Content-Type": "application/pkcs10"}
    with httpx.Client(timeout=WAIT) as client:
        anonymous = client.post(url, content=csr, headers=headers)
        assert (anonymous.status_code, anonymous.json()["error"]) == (401,
                                                                     "security/Unauthorized")
        tenant_user = client.post(url, content=csr, headers=headers,
                                  auth=("t12345/dash-gateway", "s3cret-sandbox-pw"))
        assert (tenant_user.status_code, tenant_user.json()["message"]) == (
            403, "Only a device may re-enroll its certificate")
        token = sandbox.call(lambda: sandbox.tokens.issue("another-gateway"))
        other = client.post(url, content=csr,
                            headers={**headers, "Authorization": f"Bearer {token}"})
        assert (other.status_code, other.json()["message"]) == (
            403, "the certificate request's CN must be the device ID another-gateway")
        token = sandbox.call(lambda: sandbox.tokens.issue(SERIAL))
        own_cn = client.post(url, content=csr,
                             headers={**headers, "Authorization": f"Bearer {token}"})
        assert own_cn.status_code == 200
        leaf = x509.load_pem_x509_certificates(own_cn.content)[0]
        assert leaf.subject.rfc4514_string() == f"CN={SERIAL}"
        assert leaf.public_key() == key.public_key()


def test_sandbox_simplereenroll_takes_the_device_users_password(ca_sandbox: Sandbox) -> None:
    sandbox = ca_sandbox

    def issue() -> DeviceCredentials | None:
        registrations = sandbox.registrations
        registrations.register(SERIAL)
        registrations.request(SERIAL)  # pending acceptance
        registrations.accept(SERIAL)
        return registrations.request(SERIAL)

    issued = sandbox.call(issue)
    assert issued is not None
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERIAL)]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with httpx.Client(timeout=WAIT) as client:
        answer = client.post(f"{sandbox.http_url}/.well-known/est/simplereenroll", content=csr,
                             headers={"Content-Type": "application/pkcs10"},
                             auth=(f"t12345/{issued.username}", issued.password))
    assert answer.status_code == 200
    leaf = x509.load_pem_x509_certificates(answer.content)[0]
    assert leaf.subject.rfc4514_string() == f"CN={SERIAL}"


class _WrongCertificate(http.server.BaseHTTPRequestHandler):
    """An EST server that answers with a certificate for a key that is not the gateway's."""

    body = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/pkcs7-mime; smime-type=certs-only")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_answer_for_another_key_is_refused_and_the_old_pair_kept(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], ca_sandbox: Sandbox,
        tls_files: TlsFiles) -> None:
    sandbox = ca_sandbox
    stranger = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERIAL)])
    now = datetime.now(UTC)
    wrong = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(stranger.public_key()).serial_number(7)
             .not_valid_before(now).not_valid_after(now + timedelta(days=365))
             .sign(stranger, hashes.SHA256()))
    handler = type("Handler", (_WrongCertificate,),
                   {"body": wrong.public_bytes(serialization.Encoding.PEM)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        rest_url = f"http://127.0.0.1:{server.server_address[1]}"
        config = write_config(tmp_path, sandbox, tls_files, rest_url=rest_url)
        key_path, cert_path, _ = enrolled_pair(sandbox, tmp_path / "state", days_left=10)
        key_before, cert_before = key_path.read_bytes(), cert_path.read_bytes()
        assert main(["register", "--renew", "-c", str(config)]) == 1
        out, err = capfd.readouterr()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)
    assert own(err) == [
        f"error: certificate not renewed: {rest_url}/.well-known/est/simplereenroll sent a "
        f"certificate for CN={SERIAL} that does not match this gateway's key and CN {SERIAL}; "
        f"the current certificate stays in {cert_path}"]
    assert (key_path.read_bytes(), cert_path.read_bytes()) == (key_before, cert_before)
    no_secret(out + err, key_path)


def test_check_notes_a_certificate_due_for_renewal(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], ca_sandbox: Sandbox,
        tls_files: TlsFiles) -> None:
    sandbox = ca_sandbox
    config = write_config(tmp_path, sandbox, tls_files)
    _, _, old = enrolled_pair(sandbox, tmp_path / "state", days_left=10)
    main(["check", "-c", str(config)])
    out = capfd.readouterr().out.splitlines()
    due = renewal_due(old)
    note = (f"  note: the certificate is due for renewal since {due:%Y-%m-%d %H:%M} UTC (valid "
            f"until {old.not_valid_after_utc:%Y-%m-%d %H:%M} UTC): run `dashkanban register "
            "--renew`")
    assert note in out
    assert out[out.index(note) - 1].startswith(f"✓ certificate CN={SERIAL} = [gateway] serial")
    # After a renewal the note is gone.
    assert main(["register", "--renew", "-c", str(config)]) == 0
    main(["check", "-c", str(config)])
    assert not any("due for renewal" in line for line in capfd.readouterr().out.splitlines())


def test_the_certificate_keeps_its_mode_and_a_write_failure_keeps_the_old_pair(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], ca_sandbox: Sandbox,
        tls_files: TlsFiles) -> None:
    sandbox = ca_sandbox
    config = write_config(tmp_path, sandbox, tls_files)
    key_path, cert_path, _ = enrolled_pair(sandbox, tmp_path / "state", days_left=10)
    cert_path.chmod(0o640)
    # Something in the way of the temporary file: nothing is replaced.
    blocker = cert_path.with_name(f".{cert_path.name}.new")
    blocker.mkdir()
    before = cert_path.read_bytes()
    assert main(["register", "--renew", "-c", str(config)]) == 1
    assert own(capfd.readouterr().err) == [
        f"error: certificate not renewed: cannot write {cert_path}: Is a directory; the current "
        f"certificate stays in {cert_path}"]
    assert cert_path.read_bytes() == before
    blocker.rmdir()
    assert main(["register", "--renew", "-c", str(config)]) == 0
    assert cert_path.read_bytes() != before
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o640
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_renew_and_certificate_exclude_each_other(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], ca_sandbox: Sandbox,
        tls_files: TlsFiles) -> None:
    config = write_config(tmp_path, ca_sandbox, tls_files)
    assert main(["register", "--renew", "--certificate", "-c", str(config)]) == 2
    assert own(capfd.readouterr().err) == [
        "error: --renew renews the certificate that --certificate enrolled: give one of them"]


class _EchoingRefusal(http.server.BaseHTTPRequestHandler):
    """A hostile EST server: refuses with a two-line message that echoes the caller's token."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        token = self.headers.get("Authorization", "")
        body = json.dumps({"error": "x", "message": f"no\nway {token}"}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_refusal_is_one_line_without_the_token(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], ca_sandbox: Sandbox,
        tls_files: TlsFiles) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoingRefusal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        rest_url = f"http://127.0.0.1:{server.server_address[1]}"
        config = write_config(tmp_path, ca_sandbox, tls_files, rest_url=rest_url)
        key_path, cert_path, _ = enrolled_pair(ca_sandbox, tmp_path / "state", days_left=10)
        assert main(["register", "--renew", "-c", str(config)]) == 1
        out, err = capfd.readouterr()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)
    assert own(err) == [
        f"error: certificate not renewed: {rest_url}/.well-known/est/simplereenroll answered 403 "
        f"no way Bearer <token>; the current certificate stays in {cert_path}"]
    no_secret(out + err, key_path)
