"""`dashkanban sandbox`: run the local Cumulocity stand-in until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import secrets
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from dashkanban.errors import ConfigError, DashkanbanError
from dashkanban.sandbox.registration import BOOTSTRAP_USERNAME
from dashkanban.sandbox.server import Sandbox, SandboxError, SandboxOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SandboxCommandOptions:
    """`dashkanban sandbox`'s arguments (cli.py builds them); None: a random password."""

    mqtt_port: int
    http_port: int
    bind: str
    tenant: str
    user: str
    password: str | None
    tls_cert: Path | None
    tls_key: Path | None
    data: Path | None
    bootstrap_password: str | None


def options_from_args(args: SandboxCommandOptions) -> tuple[SandboxOptions, bool]:
    """The options, and whether the password was generated (then it is printed)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    for name, port in (("mqtt_port", args.mqtt_port), ("http_port", args.http_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"--{name.replace('_', '-')} {port} is not a port (0 to 65535)")
    generated = args.password is None
    password = secrets.token_urlsafe(12) if args.password is None else args.password
    tls = args.tls_cert is not None
    options = SandboxOptions(
        password=password,
        tenant=args.tenant,
        user=args.user,
        bind=args.bind,
        mqtt_port=None if tls else args.mqtt_port,
        mqtts_port=args.mqtt_port if tls else None,
        http_port=args.http_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        data_file=args.data,
        bootstrap_password=args.bootstrap_password or secrets.token_urlsafe(12),
    )
    return options, generated


def banner(sandbox: Sandbox, generated: bool, bootstrap_generated: bool = True) -> str:
    """What `dashkanban sandbox` prints: its endpoints, and a config.ini block that works as
    pasted (issue 14): the real password, and the bundled sample's buttons, so that `check` and
    `replay` of the sample capture work at once. A password given with --password is not echoed
    (it may be one the user uses elsewhere); the block then says where it goes."""
    from dashkanban.samples import sample_path

    o = sandbox.options
    tls = sandbox.mqtts_port is not None
    port = sandbox.mqtts_port if tls else sandbox.mqtt_port
    shown = o.password if generated else "(the one given with --password)"
    lines = [
        "dashkanban sandbox: a local Cumulocity stand-in for trying and testing, not the platform",
        f"  MQTT      {'mqtts' if tls else 'mqtt'}://{sandbox.host}:{port}",
        f"  REST      {sandbox.http_url}",
        f"  page      {sandbox.http_url}/",
        f"  user      {o.username}",
        f"  password  {shown}",
        "",
        "config.ini for it (paste it as it is; chmod 600 config.ini, it holds the password):",
        "  [C8YMQTT]",
        f"  tenant = {sandbox.host}",
        f"  tenantID = {o.tenant}",
        f"  user = {o.username}",
        f"  password = {o.password if generated else '<the one given with --password>'}",
        f"  port = {port}",
        f"  tls = {'yes' if tls else 'no'}",
    ]
    if not tls:
        lines.append("  allow_insecure = yes")
    capture = sample_path("sample-store.pcapng")
    lines += [
        f"  rest_url = {sandbox.http_url}",
        "  [buttons]",
        f"  file = {sample_path('MACID.csv')}",
        "",
        "then try it with the bundled sample capture:",
        "  dashkanban check -c config.ini",
        f"  dashkanban replay {capture} -c config.ini",
        "",
    ]
    lines += _registration_help(sandbox, bootstrap_generated)
    lines += ["Ctrl-C stops it."]
    return "\n".join(lines)


def _registration_help(sandbox: Sandbox, generated: bool) -> list[str]:
    o = sandbox.options
    if not o.bootstrap_password:
        return []
    shown = o.bootstrap_password if generated else "(the one given with --bootstrap-password)"
    url = sandbox.http_url
    return [
        "Device registration, for `dashkanban register` (then no password goes into config.ini):",
        f"  bootstrap user      {BOOTSTRAP_USERNAME}",
        f"  bootstrap password  {shown}",
        "  in config.ini: [C8YMQTT] bootstrap_password = <it> (or $DASHKANBAN_BOOTSTRAP_PASSWORD),",
        "  and no user or password",
        "  1. register the gateway's serial (its [gateway] serial):",
        f"     curl -u {o.username}:<password> -H 'Content-Type: application/json' "
        f"-d '{{\"id\": \"<serial>\"}}' {url}/sandbox/registrations",
        "  2. start `dashkanban register` on the gateway; when the page shows "
        "\"Pending acceptance\", accept it:",
        f"     curl -u {o.username}:<password> -X POST {url}/sandbox/registrations/<serial>/accept",
        f"  or use the Register and Accept buttons on {url}/",
        "",
    ]


def sandbox_command(args: SandboxCommandOptions) -> int:
    options, generated = options_from_args(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    sandbox = Sandbox(options)
    try:
        try:
            sandbox.start()
        except SandboxError as exc:
            raise DashkanbanError(str(exc)) from None
        print(banner(sandbox, generated, args.bootstrap_password is None),
              flush=True)
        while not stop.wait(0.5):
            pass
        log.info("stopping the sandbox")
    finally:
        sandbox.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("sandbox stopped", file=sys.stderr)
    return 0
