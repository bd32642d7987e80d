"""`dashkanban check` and `dashkanban test-button`.

`check` walks the path an event takes, one step a line with a tick or a cross and a hint:
config, buttons file, host name, TCP, TLS (with the server certificate's subject and expiry), and
the MQTT login. It publishes nothing. Exit 0 when all pass, 1 when the uplink fails, 2 for a
configuration error.

`test-button` sends one event for a button straight through the uplink (not the outbox) and waits
for its PUBACK; exit 3 when that does not happen within `--timeout`.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dashkanban.c8y.mqtt import try_login
from dashkanban.c8y.smartrest import encode_line
from dashkanban.c8y.tls import describe_tls_failure, make_tls_context
from dashkanban.compose import load_buttons, load_registry
from dashkanban.config import Settings, find_config, load_settings
from dashkanban.detect.buttons import Button, normalize_mac
from dashkanban.detect.events import make_event
from dashkanban.detect.presses import Press
from dashkanban.errors import ConfigError, DashkanbanError, UplinkError

TICK, CROSS = "✓", "✗"
CONNECT_TIMEOUT = 10.0


def _ok(text: str) -> None:
    print(f"{TICK} {text}", flush=True)


def _fail(text: str, hint: str) -> None:
    print(f"{CROSS} {text}", flush=True)
    print(f"  hint: {hint}", flush=True)


class CheckFailedError(DashkanbanError):
    """Some steps of `check` failed; each was printed once, with its hint, above."""

    def __init__(self, failed: list[str]) -> None:
        steps = ", ".join(failed)
        super().__init__(f"check: {len(failed)} step{'s' if len(failed) > 1 else ''} failed "
                         f"({steps}); see the lines marked {CROSS} above")


@dataclass(frozen=True, slots=True)
class CheckOptions:
    """`dashkanban check`'s arguments (cli.py builds them)."""

    config: Path | None = None


@dataclass(frozen=True, slots=True)
class ButtonTestOptions:
    """`dashkanban test-button`'s arguments (cli.py builds them)."""

    button: str  # a name or MAC
    timeout: float
    config: Path | None = None


def check_command(args: CheckOptions) -> int:
    """Every step the configuration's features need, and only those (issue 14): config and
    buttons, capture (for `run`), the outbox, DNS, TCP, TLS, the MQTT login, and REST when it is
    used. A failed step is printed once: a configuration error as the one `error: FILE:LINE:`
    line of every command (exit 2), any other as ✗ with a hint, then a last line that sums up."""
    path = find_config(args.config)
    settings = load_settings(path)
    _ok(f"config {path}")
    failed: list[str] = []
    if settings.buttons.source in ("csv", "both"):
        registry = load_registry(settings)
        _ok(f"buttons {settings.buttons.file}: {len(registry)} button(s)")
    if settings.buttons.source in ("inventory", "both"):
        _ok(f"buttons from Cumulocity's inventory via {settings.c8y.rest_url} "
            f"(cached {settings.buttons.cache_ttl:g} s)")
    for name, step in (("capture", _check_capture), ("outbox", _check_outbox)):
        if not step(settings):
            failed.append(name)
    try:
        _check_certificate(settings)
        _check_uplink(settings)
        _check_token(settings)
    except UplinkError:
        failed.append("uplink")
    if rest_used(settings) and not _check_rest(settings):  # its own way in: tried either way
        failed.append("REST")
    if settings.mqtt_buttons is not None and not _check_button_broker(settings):
        failed.append("button broker")
    if failed:
        raise CheckFailedError(failed)
    _ok(f"all checks passed: events go to {settings.c8y.tenant} in {settings.gateway.mode} mode")
    return 0


def _check_button_broker(settings: Settings) -> bool:
    """`[mqtt_buttons]`: log in to the broker the MQTT buttons publish to (issue 19)."""
    import asyncio

    import aiomqtt

    from dashkanban.mqtt_buttons.source import try_broker

    broker = settings.mqtt_buttons
    assert broker is not None
    where = f"button broker {broker.host}:{broker.port}"
    as_user = f" as {broker.user}" if broker.user else ""
    try:
        asyncio.run(try_broker(broker, CONNECT_TIMEOUT))
    except aiomqtt.MqttCodeError as exc:
        _fail(f"{where}: refused the login{as_user} ({exc})",
              "check [mqtt_buttons] user and password (or password_file)")
        return False
    except aiomqtt.MqttError as exc:
        _fail(f"{where}: {exc}", "check [mqtt_buttons] host, port and tls, and that the broker "
                                 "runs")
        return False
    _ok(f"{where}: logged in{as_user}{' over TLS' if broker.tls else ''}")
    return True


def rest_used(settings: Settings) -> bool:
    """Whether a feature of this configuration talks REST: buttons from the inventory, or bins
    (the c8y_Kanban fragment, and with alarms the refill operations)."""
    if settings.buttons.source != "csv" or settings.kanban.alarms:
        return True
    try:
        from dashkanban.detect.buttons import header_fields
        from dashkanban.files import read_buttons_text

        return "bin" in header_fields(read_buttons_text(settings.buttons.file))
    except ConfigError:
        return False  # the buttons step has said what is wrong with the file


def _check_capture(settings: Settings) -> bool:
    """What `run` needs to capture: the interface, and CAP_NET_RAW for this user; nothing when
    every button is an MQTT button (`run` then opens no raw socket, issue 19)."""
    from dashkanban.capture.live import resolve_interface
    from dashkanban.privileges import grant_hint, has_cap_net_raw

    if settings.buttons.source == "csv":
        from dashkanban.mqtt_buttons.wiring import mqtt_only

        if mqtt_only(settings, load_registry(settings)):
            _ok("capture: not needed, every button is an MQTT button (`run` opens no raw "
                "socket and needs no CAP_NET_RAW)")
            return True
    name = settings.capture.interface
    try:
        interface = resolve_interface(name)
    except DashkanbanError as exc:
        _fail(f"capture: {exc}", "name the interface in [capture] interface")
        return False
    how = " (interface = auto: the default route's)" if name == "auto" else ""
    if not Path("/sys/class/net", interface).exists():
        _fail(f"capture: no interface {interface!r}{how}",
              "set [capture] interface to one `ip link` lists")
        return False
    if not has_cap_net_raw():
        _fail(f"capture on {interface}{how}: this user lacks CAP_NET_RAW, so `run` cannot "
              "capture", grant_hint())
        return False
    _ok(f"capture on {interface}{how}: CAP_NET_RAW held")
    return True


def _check_outbox(settings: Settings) -> bool:
    """The outbox file (or the folder it will be made in) is writable; creates nothing."""
    path = settings.outbox.path
    problem = outbox_problem(path)
    if problem is not None:
        _fail(f"outbox {path}: {problem}",
              "make it writable for the user that runs dashkanban, or set [outbox] path")
        return False
    _ok(f"outbox {path}: writable")
    return True


def outbox_problem(path: Path) -> str | None:
    """Why the outbox at `path` could not be written, or None."""
    if path.exists():
        if not path.is_file():
            return "not a file"
        if not os.access(path, os.R_OK | os.W_OK):
            return "the file is read-only"
        folder = path.parent
    else:
        folder = path.parent
        while not folder.exists() and folder.parent != folder:
            folder = folder.parent
        if not folder.is_dir():
            return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is read-only (SQLite writes its -wal and -shm files there)"
    return None


def _check_rest(settings: Settings) -> bool:
    """REST as the features use it: reachable, and our credentials accepted."""
    from dashkanban.c8y.rest import CumulocityRest, RestError

    c8y = settings.c8y
    try:
        with CumulocityRest.from_settings(c8y, attempts=1) as rest:
            response = rest.request("GET", "/inventory/managedObjects", "REST check",
                                    params={"pageSize": 1})
    except (RestError, OSError, ValueError) as exc:
        _fail(f"REST {c8y.rest_url}: {exc}",
              "check [C8YMQTT] rest_url (default https://<tenant>) and the credentials")
        return False
    if response.status_code != 200:
        _fail(f"REST {c8y.rest_url}: answered {response.status_code} to GET "
              "/inventory/managedObjects", "check [C8YMQTT] rest_url")
        return False
    who = c8y.username if c8y.password else "client certificate"
    _ok(f"REST {c8y.rest_url}: logged in as {who}")
    return True


def _check_uplink(settings: Settings) -> None:
    c8y = settings.c8y
    address = f"{c8y.tenant}:{c8y.port}"
    try:
        infos = socket.getaddrinfo(c8y.tenant, c8y.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        _fail(f"resolve {c8y.tenant}: {exc.strerror}", "check [C8YMQTT] tenant (the host name)")
        raise UplinkError(f"cannot resolve {c8y.tenant!r}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    _ok(f"resolve {c8y.tenant}: {', '.join(addresses)}")
    try:
        sock = socket.create_connection((c8y.tenant, c8y.port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        _fail(f"connect {address}: {exc.strerror or exc}",
              "check [C8YMQTT] port and that a firewall lets MQTT out")
        raise UplinkError(f"cannot connect to {address}: {exc.strerror or exc}") from None
    with sock:
        _ok(f"connect {address}")
        if c8y.tls:
            context = make_tls_context(c8y)
            try:
                with context.wrap_socket(sock, server_hostname=c8y.tenant) as tls:
                    cert = tls.getpeercert() or {}
                    version = tls.version()
            except ssl.SSLError as exc:
                what, hint = describe_tls_failure(exc, c8y.tenant)
                _fail(f"TLS: {what}", hint)
                raise UplinkError(f"TLS to {address} failed: {what}") from None
            _ok(f"TLS {version or '?'}: certificate {_subject(cert)}, valid until "
                f"{_expiry(cert)}, issued by {_subject(cert, 'issuer')}")
        else:
            print("! no TLS (tls = no, allow_insecure = yes): the password travels in clear text",
                  flush=True)
    try:
        client_id = try_login(settings, CONNECT_TIMEOUT)
    except UplinkError as exc:
        _fail(f"MQTT login: {exc}", _login_hint(exc))
        raise
    who = c8y.username if c8y.password else "client certificate"
    if c8y.credentials_file is not None:
        who += f" (device credentials from {c8y.credentials_file})"
    _ok(f"MQTT login as {who}, client id {client_id}")


def _check_certificate(settings: Settings) -> None:
    """With a client certificate: its CN must equal [gateway] serial and its chain must hold
    together, else Cumulocity answers CONNACK 5 (c8y/certs.py); checked before connecting."""
    c8y = settings.c8y
    if c8y.cert_file is None:
        return
    from dashkanban.c8y.certs import inspect_certificate

    try:
        report = inspect_certificate(c8y.cert_file.read_bytes(), settings.gateway.serial,
                                     datetime.now(UTC))
    except (OSError, ValueError) as exc:
        _fail(f"certificate {c8y.cert_file}: cannot read it ({exc})",
              "cert_file must be a PEM certificate (the device's first, then its chain)")
        raise ConfigError(f"cert_file {c8y.cert_file}: not a PEM certificate") from None
    if report.problems:
        for problem in report.problems[1:]:
            print(f"{CROSS} certificate: {problem}", flush=True)
        _fail(f"certificate: {report.problems[0]}",
              "the CN must equal [gateway] serial, and the file must hold the chain up to the "
              "CA the tenant trusts (Cumulocity: Device management > Trusted certificates)")
        raise UplinkError(f"the client certificate {c8y.cert_file} would be refused: "
                          f"{report.problems[0]}")
    chain = " <- ".join(report.chain)
    trust = ("the tenant must trust its root" if report.ends_at_root
             else f"the tenant must trust {report.chain[-1]!r}'s issuer")
    _ok(f"certificate CN={report.common_name} = [gateway] serial; chain {chain} ({trust})")
    _renewal_note(c8y.cert_file.read_bytes())


def _renewal_note(pem: bytes) -> None:
    """A note, not a failure, once a third of the certificate's lifetime is left."""
    from cryptography import x509

    from dashkanban.c8y.est import renewal_due

    leaf = x509.load_pem_x509_certificates(pem)[0]
    due = renewal_due(leaf)
    if datetime.now(UTC) >= due:
        print(f"  note: the certificate is due for renewal since {due:%Y-%m-%d %H:%M} UTC (valid "
              f"until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC): run `dashkanban register "
              "--renew`", flush=True)


def _check_token(settings: Settings) -> None:
    """A certificate-only gateway reads the inventory over REST with a device token: ask for one
    (an empty `s/uat`, the answer `71,<JWT>` on `s/dat`; device-certificates.md)."""
    from dashkanban.c8y.token import fetch_token, lifetime_of

    if settings.c8y.password is not None:
        return
    try:
        jwt = fetch_token(settings, CONNECT_TIMEOUT)
    except UplinkError as exc:
        _fail(f"device token: {exc}",
              "Cumulocity answers s/uat only for certificate logins of registered devices")
        raise
    _ok(f"device token for REST (s/uat): valid {lifetime_of(jwt):.0f} s, sent as Bearer")


def _login_hint(exc: UplinkError) -> str:
    text = str(exc)
    return text.rsplit("; ", 1)[-1] if "; " in text else "see the error above"


def _subject(cert: Mapping[str, Any], key: str = "subject") -> str:
    parts = []
    for rdn in cert.get(key, ()):
        for name, value in rdn:
            parts.append(f"{name}={value}")
    return ", ".join(parts) or "(none)"


def _expiry(cert: Mapping[str, Any]) -> str:
    raw = cert.get("notAfter")
    if not isinstance(raw, str):
        return "(unknown)"
    when = datetime.fromtimestamp(ssl.cert_time_to_seconds(raw), UTC)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def find_button(settings: Settings, name_or_mac: str) -> Button:
    """The button named NAME|MAC: from MACID.csv, or any MAC when the source is the inventory."""
    source = settings.buttons.source
    if source in ("csv", "both"):
        button = load_buttons(settings.buttons.file).find(name_or_mac)
        if button is not None:
            return button
    if source in ("inventory", "both"):
        try:
            mac = normalize_mac(name_or_mac)
        except ValueError:
            pass
        else:
            return Button(name=mac.replace(":", ""), mac=mac)
    raise ConfigError(
        f"no button {name_or_mac!r} in {settings.buttons.file} (give its Name or MAC)"
    )


def test_button_command(args: ButtonTestOptions) -> int:
    """One event as if the button had been pressed: queued in the outbox like a press, then
    delivered (exit 0), or left queued (exit 3); with `dashkanban run` running, queued for it."""
    from dashkanban.compose import deliver_explained
    from dashkanban.outbox.store import Outbox

    settings = load_settings(find_config(args.config))
    button = find_button(settings, args.button)
    press = Press(button=button, time=datetime.now(UTC), trigger="test")
    event = make_event(press, settings.event)
    topic = f"s/us/{event.serial}" if settings.gateway.mode == "gateway" else "s/us"
    line = encode_line(400, event.type, event.text, event.c8y_time)
    start = time.monotonic()
    with Outbox.from_settings(settings.outbox) as outbox:
        delivered = deliver_explained(settings, outbox, [event], timeout=args.timeout,
                                      max_refusals=1)
    print(f"{TICK} {topic} {line}", flush=True)
    if delivered is None:
        print(f"{TICK} queued in {settings.outbox.path}: the running dashkanban service "
              "delivers it", flush=True)
        return 0
    elapsed = (time.monotonic() - start) * 1000
    print(f"{TICK} acknowledged by {settings.c8y.tenant} (PUBACK) after {elapsed:.0f} ms",
          flush=True)
    if button.bin is not None:  # whatever delivers a bin button's press writes its c8y_Kanban
        from dashkanban.compose import write_fragments
        from dashkanban.kanban.wiring import load_kanban_bins

        write_fragments(settings, load_kanban_bins(settings), [press])
    return 0


__all__ = ["check_command", "find_button", "test_button_command"]
