"""What `check` can tell about a device certificate before it connects (pure: PEM bytes in).

Cumulocity refuses a certificate login with CONNACK 5 when "the deviceIdentifier must match the
'Common Name' of the used certificate (first certificate in the chain)" does not hold, or the
chain does not lead to a CA the tenant trusts: devices "must contain the entire chain of
certificates leading to the trusted root certificate, or if only the device certificate is
provided, then the immediate issuer certificate must be uploaded" (c8y-docs `implementation.md`,
"MQTT ClientId" and "MQTT authentication"; `device-certificates.md`). Which CA the tenant trusts
only the tenant knows; what can be checked locally is the CN, the validity dates and that each
certificate of the chain is signed by the next one, which must be a CA.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID


@dataclass(frozen=True, slots=True)
class CertificateReport:
    common_name: str
    chain: tuple[str, ...]  # subject CNs, device first
    problems: tuple[str, ...]  # each one line; empty when the certificate looks right
    ends_at_root: bool  # the chain includes its self-signed root


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def inspect_certificate(pem: bytes, serial: str, now: datetime) -> CertificateReport:
    """The device certificate of `cert_file` (with any chain after it) against `[gateway]
    serial`. Raises ValueError when the file holds no PEM certificate."""
    certs = x509.load_pem_x509_certificates(pem)
    leaf = certs[0]
    common_name = _cn(leaf.subject)
    problems: list[str] = []
    if common_name != serial:
        problems.append(
            f"the certificate's CN {common_name!r} differs from [gateway] serial {serial!r}: "
            "Cumulocity refuses the login with CONNACK 5 (the client id must equal the CN)")
    for cert in certs:
        if now < cert.not_valid_before_utc:
            problems.append(f"{_cn(cert.subject)!r} is not valid before "
                            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
        if now > cert.not_valid_after_utc:
            problems.append(f"{_cn(cert.subject)!r} expired on "
                            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    for child, parent in itertools.pairwise(certs):
        if not _is_ca(parent):
            problems.append(f"{_cn(parent.subject)!r} signs {_cn(child.subject)!r} but is no CA "
                            "(BasicConstraints CA:true)")
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            problems.append(f"{_cn(child.subject)!r} is not signed by the next certificate in "
                            f"the file, {_cn(parent.subject)!r}: the chain is broken")
    last = certs[-1]
    ends_at_root = last.issuer == last.subject and len(certs) > 1
    return CertificateReport(common_name, tuple(_cn(c.subject) for c in certs), tuple(problems),
                             ends_at_root)
