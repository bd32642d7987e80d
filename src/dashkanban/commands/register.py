"""`dashkanban register`: Cumulocity's device registration over MQTT (docs/install.md).

The gateway connects as the bootstrap user with its serial as client id, subscribes to `s/dcr`
and publishes an empty message on `s/ucr` every 5 s until the platform answers
`70,<tenantID>,<user>,<password>` on `s/dcr`, which it does once an operator has registered and
accepted the serial in Device Management (c8y-docs `device-integration/mqtt-bundle/
integration-life-cycle.md`, "Step 0"; the same loop as Cumulocity's own Python agent,
`cumulocity-devicemanagement-agent: c8ydm/client/bootstrap_client.py`). The credentials go to
`<state directory>/credentials` (mode 0600), which every command reads when `[C8YMQTT]` holds no
login of its own.

A one-shot client of its own (asyncio and aiomqtt), not the daemon's uplink: it shares only the
config and the TLS context. Exit 0 stored, 1 refused or unreachable, 2 configuration, 3 not
accepted within `--timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from dashkanban import credentials
from dashkanban.c8y.smartrest import decode
from dashkanban.c8y.tls import make_tls_context
from dashkanban.config import (
    BOOTSTRAP_PASSWORD_ENV,
    PASSWORD_ENV,
    C8yMqttSettings,
    Settings,
    find_config,
    load_settings,
)
from dashkanban.credentials import DeviceCredentials
from dashkanban.errors import EXIT_UNDELIVERED, ConfigError, DashkanbanError, UplinkError
from dashkanban.secret import Secret

log = logging.getLogger(__name__)

ONE_TIME_PASSWORD_ENV = "DASHKANBAN_ONE_TIME_PASSWORD"  # noqa: S105 - the variable's name
REQUEST_TOPIC = "s/ucr"
RESPONSE_TOPIC = "s/dcr"
CREDENTIALS_TEMPLATE = "70"
# "publishing continuous empty messages" (integration-life-cycle.md); every 5 s as in the
# example in docs/protocol.md 1.9 and c8ydm's loop. Tests make it shorter; it is no config key.
REQUEST_INTERVAL = 5.0
CONNECT_TIMEOUT = 10.0
TICK = "✓"

# CONNACK codes of MQTT 3.1.1 as Cumulocity documents them (docs/protocol.md 1.7); paho reports
# them as MQTT 5 reason codes.
_V5_TO_V3 = {132: 1, 133: 2, 136: 3, 134: 4, 135: 5}
_CONNACK = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class RegisterTimeoutError(DashkanbanError):
    """Not accepted within --timeout (exit code 3)."""

    exit_code = EXIT_UNDELIVERED


def parse_credentials_line(payload: bytes) -> DeviceCredentials | None:
    """The credentials in a `70,<tenantID>,<user>,<password>` message, else None (pure).

    A password with an unquoted comma keeps it: everything after the third comma is the
    password ([unverified] whether the platform quotes it; docs/cumulocity.md)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    for line in decode(text):
        if line.template != CREDENTIALS_TEMPLATE or len(line.fields) < 3:
            continue
        tenant_id, user = line.fields[0].strip(), line.fields[1].strip()
        password = ",".join(line.fields[2:])
        if tenant_id and user and password and "/" not in tenant_id:
            return DeviceCredentials(tenant_id, user.rpartition("/")[2], Secret(password))
    return None


def _connack(exc: aiomqtt.MqttCodeError) -> int | None:
    rc = exc.rc
    if isinstance(rc, ReasonCode):
        return _V5_TO_V3.get(rc.value, rc.value)
    return rc


async def request_credentials(c8y: C8yMqttSettings, serial: str, password: Secret, *,
                              timeout: float, interval: float,
                              on_waiting: Callable[[], None]) -> DeviceCredentials:
    """Ask until `70` arrives; raises RegisterTimeoutError, or UplinkError when refused or
    unreachable. A connection lost after the first login is made again until the deadline."""
    address = f"{c8y.tenant}:{c8y.port}"
    # The bootstrap login carries no client certificate: it is the device's first contact.
    context = make_tls_context(replace(c8y, cert_file=None, key_file=None)) if c8y.tls else None
    waiting = False
    found: DeviceCredentials | None = None
    try:
        async with asyncio.timeout(timeout):
            while found is None:
                try:
                    async with aiomqtt.Client(
                        c8y.tenant, c8y.port, username=c8y.bootstrap_user,
                        password=password.reveal(), identifier=serial,
                        protocol=aiomqtt.ProtocolVersion.V311, clean_session=True,
                        keepalive=c8y.keepalive, tls_context=context, timeout=CONNECT_TIMEOUT,
                    ) as client:
                        await client.subscribe(RESPONSE_TOPIC, qos=1)
                        if not waiting:
                            waiting = True
                            on_waiting()
                        stop = asyncio.Event()
                        asking = asyncio.create_task(_ask(client, interval, stop))
                        try:
                            found = await _await_credentials(client)
                        finally:
                            await _stop(asking, stop)
                except MqttConnectError as exc:
                    code = _connack(exc)
                    meaning = _CONNACK.get(code or 0, f"code {code}")
                    raise UplinkError(
                        f"{address} refused the bootstrap login as {c8y.bootstrap_user}: "
                        f"{meaning} (CONNACK {code}); check [C8YMQTT] bootstrap_password or "
                        f"${BOOTSTRAP_PASSWORD_ENV}") from None
                except aiomqtt.MqttError as exc:
                    if found is not None:
                        # Only the goodbye failed: the credentials are here.
                        log.debug("disconnecting from %s after 70: %s", address, exc)
                        break
                    if not waiting:
                        raise UplinkError(f"cannot connect to {address}: {exc}") from None
                    log.warning("connection to %s lost (%s); connecting again in %g s",
                                address, exc, interval)
                    await asyncio.sleep(interval)
    except TimeoutError:
        if found is not None:
            return found
        raise RegisterTimeoutError(
            f"not accepted within {timeout:g} s: register and accept the serial {serial} in "
            "Device Management > Registration, then run `dashkanban register` again") from None
    assert found is not None  # the loop ends only with credentials
    return found


async def _ask(client: aiomqtt.Client, interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await client.publish(REQUEST_TOPIC, b"", qos=1)
        log.debug("asked for device credentials on %s", REQUEST_TOPIC)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def _stop(asking: asyncio.Task[None], stop: asyncio.Event) -> None:
    # Python 3.11's asyncio.wait_for, inside aiomqtt's publish, drops a cancellation that comes
    # as the PUBACK does (fixed in 3.12): the flag ends the loop whatever happens to cancel().
    stop.set()
    for _ in range(100):  # bounded: a publish waits at most CONNECT_TIMEOUT for its PUBACK
        if asking.done():
            break
        asking.cancel()
        await asyncio.wait({asking}, timeout=0.1)
    if asking.done() and not asking.cancelled():
        with contextlib.suppress(aiomqtt.MqttError):
            asking.result()


async def _await_credentials(client: aiomqtt.Client) -> DeviceCredentials:
    async for message in client.messages:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        found = parse_credentials_line(payload)
        if found is not None:
            return found
        # Not quoted: a malformed line may still hold a password.
        log.warning("ignored a message of %d bytes on %s that is no 70 line", len(payload),
                    message.topic)
    raise aiomqtt.MqttError("the connection closed")


def operator_instructions(serial: str, tenant: str, timeout: float) -> str:
    return (
        f"Waiting up to {timeout:g} s for {tenant} to accept this gateway (serial {serial}).\n"
        "To accept it, in Cumulocity's Device Management open Devices > Registration, click\n"
        f"Register device > General, enter the device ID {serial} and click Next; when it shows\n"
        '"Pending acceptance", click Accept.'
    )


def _enrolled(settings: Settings) -> bool:
    """Whether the login is the certificate of an earlier `register --certificate`."""
    from dashkanban.c8y.est import certificate_paths

    return settings.c8y.cert_file == certificate_paths(settings.outbox.path)[1]


def _login_in_config(settings: Settings) -> str | None:
    """What in [C8YMQTT] is a login of its own already, in words, or None."""
    c8y = settings.c8y
    if c8y.credentials_file is not None or _enrolled(settings):
        return None
    if c8y.cert_file is not None:
        return "a client certificate (cert_file)"
    if c8y.password is not None:
        return f"a password (password, password_file or ${PASSWORD_ENV})"
    return None


@dataclass(frozen=True, slots=True)
class RegisterOptions:
    """`dashkanban register`'s arguments (cli.py builds them)."""

    timeout: float
    force: bool
    certificate: bool
    renew: bool
    config: Path | None = None


def register_command(args: RegisterOptions) -> int:
    path = find_config(args.config)
    settings = load_settings(path, need_credentials=False)
    if args.renew:
        return _renew(settings, args)
    c8y = settings.c8y
    serial = settings.gateway.serial
    target = credentials.credentials_path(settings.outbox.path)
    configured = _login_in_config(settings)
    if configured is not None and not args.force:
        raise ConfigError(
            f"[C8YMQTT] already has {configured}; remove it to use device credentials, or "
            "give --force to register anyway", path)
    if c8y.credentials_file is not None and not args.force:
        raise ConfigError(
            f"{target} already holds the credentials of {c8y.username}; --force replaces them")
    if _enrolled(settings) and not args.force:
        raise ConfigError(
            f"{c8y.cert_file} already holds this gateway's certificate; --force replaces it")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout {args.timeout:g}: give a positive number of seconds")
    if args.certificate:
        return _certificate(settings, args, configured)
    if c8y.bootstrap_password is None:
        raise ConfigError(
            f"no bootstrap password: set [C8YMQTT] bootstrap_password or "
            f"${BOOTSTRAP_PASSWORD_ENV} (Cumulocity's support hands it out)", path)

    def waiting() -> None:
        print(operator_instructions(serial, c8y.tenant, args.timeout), flush=True)

    found = asyncio.run(request_credentials(
        c8y, serial, c8y.bootstrap_password, timeout=args.timeout,
        interval=REQUEST_INTERVAL, on_waiting=waiting))
    credentials.write(target, found, datetime.now(UTC))
    print(f"{TICK} accepted: this gateway logs in as {found.username}", flush=True)
    print(f"{TICK} stored in {target} (mode 0600)", flush=True)
    if configured is not None:
        print(f"note: [C8YMQTT] in {path} still has {configured}, which comes first; remove "
              f"user, password, password_file and cert_file (and ${PASSWORD_ENV}) to log in "
              "with the stored credentials", flush=True)
    return 0


def _certificate(settings: Settings, args: RegisterOptions, configured: str | None) -> int:
    from dashkanban.c8y.est import enrol

    c8y, serial = settings.c8y, settings.gateway.serial
    one_time = os.environ.get(ONE_TIME_PASSWORD_ENV, "")
    if not one_time and sys.stdin.isatty():
        one_time = getpass.getpass(f"one-time password of {serial}: ")
    if not one_time:
        raise ConfigError(f"no one-time password: set ${ONE_TIME_PASSWORD_ENV} (the one the "
                          "operator registered the device with) or run it on a terminal")

    def waiting() -> None:
        print(f"Waiting up to {args.timeout:g} s for the certificate authority of {c8y.tenant} "
              f"to sign a certificate for {serial}.\nRegister the device ID {serial} with a "
              "one-time password for the certificate authority in Device Management, and give "
              f"the same password here (${ONE_TIME_PASSWORD_ENV}).", flush=True)

    done = enrol(c8y, serial, Secret(one_time), settings.outbox.path,
                 timeout=args.timeout, interval=REQUEST_INTERVAL, on_waiting=waiting)
    print(f"{TICK} certificate {done.subject}, issued by {done.issuer}, valid until "
          f"{done.not_after:%Y-%m-%d %H:%M} UTC", flush=True)
    print(f"{TICK} key in {done.key_path} (mode 0600), certificate in {done.cert_path}",
          flush=True)
    if configured is not None:
        print(f"note: [C8YMQTT] in {settings.path} still has {configured}, which comes first; "
              "remove user, password, password_file and cert_file to log in with the "
              "certificate", flush=True)
    return 0


def _renew(settings: Settings, args: RegisterOptions) -> int:
    """`register --renew`: EST simplereenroll when a third of the certificate's lifetime is
    left (at once with --force), authenticated with the device token of `s/uat`."""
    from cryptography import x509

    from dashkanban.c8y.est import RenewError, renew, renewal_due
    from dashkanban.c8y.token import WAIT, fetch_token

    c8y = settings.c8y
    if args.certificate:
        raise ConfigError("--renew renews the certificate that --certificate enrolled: give one "
                          "of them")
    if c8y.cert_file is None or c8y.key_file is None:
        raise ConfigError("no certificate to renew: [C8YMQTT] has no cert_file and key_file and "
                          "no certificate is enrolled; run `dashkanban register --certificate` "
                          "first", settings.path)
    try:
        current = x509.load_pem_x509_certificates(c8y.cert_file.read_bytes())[0]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cert_file {c8y.cert_file}: cannot read a PEM certificate "
                          f"({type(exc).__name__})") from None
    if not args.timeout > 0:
        raise ConfigError(f"--timeout {args.timeout:g}: give a positive number of seconds")
    now = datetime.now(UTC)
    expires, due = current.not_valid_after_utc, renewal_due(current)
    kept = f"the current certificate stays in {c8y.cert_file}"
    if now < due and not args.force:
        print(f"{TICK} certificate valid until {expires:%Y-%m-%d %H:%M} UTC; renewal is due from "
              f"{due:%Y-%m-%d %H:%M} UTC, when a third of its lifetime is left; nothing to do "
              "(--force renews now)", flush=True)
        return 0
    if now >= expires:
        raise RenewError(
            f"certificate not renewed: it expired on {expires:%Y-%m-%d %H:%M} UTC and can no "
            "longer log in for a device token; enrol again with a new one-time password "
            "(`dashkanban register --certificate --force`)")
    try:
        token = fetch_token(settings, timeout=min(args.timeout, WAIT))
    except UplinkError as exc:
        raise RenewError(f"certificate not renewed: no device token ({exc}); {kept}") from None
    done = renew(c8y, settings.gateway.serial, f"Bearer {token}")
    print(f"{TICK} certificate renewed: {done.subject}, issued by {done.issuer}, valid until "
          f"{done.not_after:%Y-%m-%d %H:%M} UTC", flush=True)
    # The daemon's TLS context is built once at start, and SIGHUP (`systemctl reload`) re-reads
    # only MACID.csv: the new certificate needs a restart (docs/service.md).
    print(f"{TICK} same key in {done.key_path}, new certificate in {done.cert_path}; a running "
          "`dashkanban run` keeps the old one until it restarts: `sudo systemctl restart "
          "dashkanban` (a reload is not enough)", flush=True)
    return 0


__all__ = ["parse_credentials_line", "register_command", "request_credentials"]
