"""The EST client: a device certificate from the tenant's certificate authority, and its renewal
(docs/cumulocity.md, "Certificates from Cumulocity's CA"). An adapter, not a command: `register
--certificate` and `register --renew` call it, and `check` asks it whether a renewal is due.

The gateway makes its own key (kept 0600, never sent), a CSR whose CN is `[gateway] serial`, and
POSTs it to `/.well-known/est/simpleenroll` with HTTP Basic auth `<serial>:<one-time password>`,
the password the operator set when registering the device (c8y-docs `device-integration/
certificate-authority-bundle/device-enroll-and-re-enroll.md`; thin-edge.io's `tedge cert download
c8y`, `crates/core/tedge/src/cli/certificate/c8y/download.rs`, does the same and polls until the
device is registered). Until then the platform refuses; it is asked again every 5 s.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from dashkanban.c8y.tls import rest_verify
from dashkanban.config import C8yMqttSettings
from dashkanban.errors import DashkanbanError, UplinkError
from dashkanban.secret import Secret

log = logging.getLogger(__name__)

CsrKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

KEY_NAME = "device-key.pem"
CERT_NAME = "device-cert.pem"
ENROLL_PATH = "/.well-known/est/simpleenroll"
REENROLL_PATH = "/.well-known/est/simplereenroll"
# Renew when less than a third of the lifetime is left (the sandbox's and Cumulocity's CA issue
# for a year [unverified for Cumulocity], so about four months ahead): time for a timer that
# runs daily to retry through outages, and the old certificate still works meanwhile.
RENEW_WHEN_LEFT = 1 / 3
HTTP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Enrolled:
    key_path: Path
    cert_path: Path
    subject: str
    issuer: str
    not_after: datetime


class RenewError(UplinkError):
    """The certificate was not renewed; the old key and certificate are kept (exit 1)."""


class EnrolTimeoutError(DashkanbanError):
    """No certificate within --timeout (exit 3)."""

    exit_code = 3


def certificate_paths(outbox_path: Path) -> tuple[Path, Path]:
    """(key, certificate) in the state folder, next to the outbox and the credentials file."""
    return outbox_path.parent / KEY_NAME, outbox_path.parent / CERT_NAME


def renewal_due(certificate: x509.Certificate) -> datetime:
    """When a third of the certificate's lifetime is left (pure)."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return end - (end - start) * RENEW_WHEN_LEFT


def make_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: CsrKey, serial: str) -> bytes:
    """The CSR (DER): CN = the gateway serial, which Cumulocity takes as the device ID."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER)


def parse_enrolled(body: bytes) -> list[x509.Certificate]:
    """The certificates of an EST answer: PEM (as the docs' example and tedge read it), or
    base64 PKCS#7 certs-only (RFC 7030, 4.2.3). [unverified] which one the platform sends."""
    text = body.strip()
    if b"-----BEGIN CERTIFICATE-----" in text:
        return x509.load_pem_x509_certificates(text)
    if b"-----BEGIN PKCS7-----" in text:
        return pkcs7.load_pem_pkcs7_certificates(text)
    try:
        der = base64.b64decode(b"".join(text.split()), validate=True)
    except ValueError:
        return []
    try:
        return pkcs7.load_der_pkcs7_certificates(der)
    except ValueError:
        return []


def write_private(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a new file of `mode`, then rename it into place (no moment where a key
    is half-written or readable by others)."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    temp = path.with_name(f".{path.name}.new")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def enrol(c8y: C8yMqttSettings, serial: str, one_time_password: Secret, outbox_path: Path, *,
          timeout: float, interval: float, on_waiting: Callable[[], None],
          client: httpx.Client | None = None) -> Enrolled:
    """Make a key and a CSR, ask the CA until it signs, store key (0600) and certificate."""
    key_path, cert_path = certificate_paths(outbox_path)
    key = make_key()
    csr = make_csr(key, serial)
    url = c8y.rest_url + ENROLL_PATH
    body = base64.encodebytes(csr)
    headers = {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"}
    http = client or httpx.Client(verify=rest_verify(c8y), timeout=HTTP_TIMEOUT)
    deadline = time.monotonic() + timeout
    waiting = False
    try:
        while True:
            try:
                response = http.post(url, content=body, headers=headers,
                                     auth=httpx.BasicAuth(serial, one_time_password.reveal()))
            except httpx.HTTPError as exc:
                raise UplinkError(f"cannot reach {url}: {exc}") from None
            if response.status_code in (200, 201):
                certificates = parse_enrolled(response.content)
                if not certificates:
                    raise UplinkError(f"{url} answered {response.status_code} without a "
                                      "certificate")
                break
            if response.status_code not in (401, 403, 404):
                raise UplinkError(f"{url} refused the certificate request: "
                                  f"{response.status_code} {_message(response)}")
            # Not registered yet (or the one-time password is not set yet): ask again.
            log.info("%s: %d %s; asking again in %g s", url, response.status_code,
                     _message(response), interval)
            if not waiting:
                waiting = True
                on_waiting()
            if time.monotonic() + interval > deadline:
                raise EnrolTimeoutError(
                    f"no certificate within {timeout:g} s: register {serial} with a one-time "
                    f"password for the certificate authority, then run `dashkanban register "
                    f"--certificate` again (last answer: {response.status_code} "
                    f"{_message(response)})")
            time.sleep(interval)
    finally:
        if client is None:
            http.close()
    leaf = certificates[0]
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
    write_private(key_path, key_pem, 0o600)
    write_private(cert_path, chain, 0o644)
    return Enrolled(key_path, cert_path, leaf.subject.rfc4514_string(),
                    leaf.issuer.rfc4514_string(), leaf.not_valid_after_utc.astimezone(UTC))


def renew(c8y: C8yMqttSettings, serial: str, authorization: str, *,
          client: httpx.Client | None = None) -> Enrolled:
    """EST simplereenroll for the key and certificate `c8y` logs in with: a CSR with CN `serial`
    from the same key, sent with `authorization` (`Bearer <JWT>`). The new certificate replaces
    the old one in one rename only when it is for this key and this CN; on any failure RenewError
    says why in one line and both files stay as they were."""
    if c8y.cert_file is None or c8y.key_file is None:
        raise RenewError("no certificate to renew: run `dashkanban register --certificate` "
                         "first")
    key_path, cert_path = c8y.key_file, c8y.cert_file
    kept = f"the current certificate stays in {cert_path}"
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise RenewError(f"certificate not renewed: cannot read the key {key_path}: "
                         f"{type(exc).__name__}; {kept}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise RenewError(f"certificate not renewed: the key {key_path} is neither EC nor RSA; "
                         f"{kept}")
    url = c8y.rest_url + REENROLL_PATH
    headers = {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64",
               "Authorization": authorization}
    body = base64.encodebytes(make_csr(key, serial))
    http = client or httpx.Client(verify=rest_verify(c8y), timeout=HTTP_TIMEOUT)
    try:
        try:
            response = http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise RenewError(f"certificate not renewed: cannot reach {url}: "
                             f"{type(exc).__name__}; {kept}") from None
    finally:
        if client is None:
            http.close()
    if response.status_code not in (200, 201):
        # The server's words are data: one line, bounded, and never our own token echoed back.
        said = _message(response)
        credential = authorization.partition(" ")[2]
        if credential:
            said = said.replace(credential, "<token>")
        said = " ".join(said.split())[:200]
        raise RenewError(f"certificate not renewed: {url} answered {response.status_code} "
                         f"{said}; {kept}")
    certificates = parse_enrolled(response.content)
    if not certificates:
        raise RenewError(f"certificate not renewed: {url} answered {response.status_code} "
                         f"without a certificate; {kept}")
    leaf = certificates[0]
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [serial] or leaf.public_key() != key.public_key():
        raise RenewError(f"certificate not renewed: {url} sent a certificate for "
                         f"{leaf.subject.rfc4514_string()} that does not match this gateway's "
                         f"key and CN {serial}; {kept}")
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
    try:
        # The mode the file had (0644 as enrolled; a cert_file of the operator's keeps its own).
        mode = stat.S_IMODE(cert_path.stat().st_mode)
        write_private(cert_path, chain, mode)
    except OSError as exc:
        raise RenewError(f"certificate not renewed: cannot write {cert_path}: "
                         f"{exc.strerror or type(exc).__name__}; {kept}") from None
    log.debug("renewed the certificate %s: valid until %s", cert_path,
              leaf.not_valid_after_utc.isoformat())
    return Enrolled(key_path, cert_path, leaf.subject.rfc4514_string(),
                    leaf.issuer.rfc4514_string(), leaf.not_valid_after_utc.astimezone(UTC))


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.reason_phrase
    message = data.get("message") if isinstance(data, dict) else None
    return str(message) if message else response.reason_phrase
