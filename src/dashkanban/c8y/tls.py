"""One TLS client context for everything that talks to Cumulocity (MQTT, REST, `check`).

Built from `[C8YMQTT]`: the system's CAs unless `ca_file` is set, the host name always verified,
and an optional X.509 client certificate (docs/protocol.md 1.8). Both sides share it so that a
certificate that works for the uplink also works for the inventory look-up, and `check` tests
exactly what the daemon will use.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from dashkanban.config import C8yMqttSettings
from dashkanban.errors import ConfigError


def make_tls_context(c8y: C8yMqttSettings) -> ssl.SSLContext:
    """A verifying client context. Raises ConfigError when a configured file cannot be used."""
    context = verifying_context(c8y.ca_file)
    if c8y.cert_file is not None:
        try:
            context.load_cert_chain(
                str(c8y.cert_file), str(c8y.key_file) if c8y.key_file is not None else None
            )
        except FileNotFoundError as exc:
            raise ConfigError(f"cert_file/key_file: {exc.filename} does not exist") from None
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"cert_file {c8y.cert_file} with key_file {c8y.key_file}: cannot load the client "
                f"certificate ({exc})"
            ) from None
    return context


def verifying_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies the server against `ca_file` (default: the system's CAs)
    and its host name; also the button broker's (`[mqtt_buttons]`, mqtt_buttons/source.py)."""
    try:
        context = ssl.create_default_context(
            cafile=str(ca_file) if ca_file is not None else None
        )
    except FileNotFoundError:
        raise ConfigError(f"ca_file {ca_file} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"ca_file {ca_file} is not a PEM CA bundle ({exc})") from None
    # create_default_context already sets both; stated so nobody weakens it by accident.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def describe_tls_failure(exc: BaseException, host: str) -> tuple[str, str]:
    """(what went wrong, what to do) for a failed TLS handshake, in words for the user."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc)
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            return (
                f"the server certificate is not valid for {host!r} ({reason})",
                "set [C8YMQTT] tenant to a host name the certificate lists",
            )
        if "expired" in reason.lower():
            return (f"the server certificate has expired ({reason})", "renew it on the server")
        return (
            f"the server certificate is not trusted ({reason})",
            "set [C8YMQTT] ca_file to the CA bundle that signed it",
        )
    return (f"TLS handshake failed ({exc})", "check port and tls in [C8YMQTT]")


def rest_verify(c8y: C8yMqttSettings) -> ssl.SSLContext | bool:
    """What httpx's `verify` gets for the REST side: the same CA and client certificate as
    MQTT over TLS (an https URL), or True for plain http, where there is nothing to verify."""
    return make_tls_context(c8y) if c8y.rest_url.startswith("https:") else True
