"""config.ini -> a frozen, validated Settings value (README.md "Configuration").

The `[C8YMQTT]` section is the original example's and its five keys (tenant, tenantID, user,
password, port) keep their meaning. Every other key has a default. Errors carry the file and line:
`FILE:LINE: what is wrong`, with a "did you mean" hint for misspelt names.

A small reader of our own instead of configparser: configparser forgets line numbers, which every
error message here needs.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from dashkanban.detect.buttons import Button
from dashkanban.errors import ConfigError
from dashkanban.files import MAX_CONFIG_BYTES, MAX_SECRET_BYTES, check_owner, read_regular
from dashkanban.secret import Secret
from dashkanban.values import (
    BUTTON_SOURCES,
    DETECT,
    GATEWAY_MODES,
    SEVERITIES,
    ButtonSource,
    Detect,
    GatewayMode,
    PressKind,
    Severity,
    Trigger,
)

DEFAULT_PATHS = (Path("config.ini"), Path("/etc/dashkanban/config.ini"))
PASSWORD_ENV = "DASHKANBAN_PASSWORD"  # noqa: S105 - the variable's name
BOOTSTRAP_PASSWORD_ENV = "DASHKANBAN_BOOTSTRAP_PASSWORD"  # noqa: S105 - the variable's name
# Cumulocity's bootstrap user for device registration (lifecycle-mqtt.md; docs/cumulocity.md).
BOOTSTRAP_USER = "management/devicebootstrap"

DETECT_METHODS = DETECT

T = TypeVar("T")
W = TypeVar("W", bound=str)  # one word of a closed set (values.py)
DEFAULT_EVENT_TEXT = "{name} pressed ({mac})"
EVENT_FIELDS = ("name", "mac", "serial", "trigger", "bin", "part", "quantity", "location",
                "kind")


@dataclass(frozen=True, slots=True)
class C8yMqttSettings:
    tenant: str  # the tenant's host name, as in the original example
    tenant_id: str
    user: str  # without the "tenantID/" prefix
    password: Secret | None
    port: int
    tls: bool
    allow_insecure: bool
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    rest_url: str  # base URL of the REST API; default https://<tenant>
    keepalive: int
    # Where user and password came from when [C8YMQTT] names none: `dashkanban register`'s file.
    credentials_file: Path | None = None
    bootstrap_user: str = BOOTSTRAP_USER
    bootstrap_password: Secret | None = None
    # QoS 1 messages unacknowledged at once: Cumulocity disconnects a client over its queue limit
    # (docs/protocol.md 1.6), so start-up lines and a drained backlog go through this window.
    max_inflight: int = 20
    # Seconds: the longest wait between two connection attempts of `run` (it never gives up).
    retry_max: int = 300

    @property
    def username(self) -> str:
        """MQTT and REST user name: `<tenantID>/<user>` (docs/protocol.md 1.2, 3.1)."""
        return f"{self.tenant_id}/{self.user}"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    serial: str
    name: str
    mode: GatewayMode
    required_interval: int  # minutes, sent as 117


@dataclass(frozen=True, slots=True)
class ButtonsSettings:
    file: Path
    source: ButtonSource
    cache_ttl: float


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    interface: str
    detect: frozenset[Detect]
    promiscuous: bool


@dataclass(frozen=True, slots=True)
class EventSettings:
    type: str
    text: str


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    path: Path
    max_rows: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    port: int | None
    log_interval: float


@dataclass(frozen=True, slots=True)
class KanbanSettings:
    alarms: bool
    severity: Severity
    safety: float
    history_days: int
    min_samples: int = 3  # measured replenishments before the median replaces lead_time_days
    overdue_severity: Severity = "CRITICAL"  # of the c8y_KanbanOverdue alarm


@dataclass(frozen=True, slots=True)
class MqttButtonsSettings:
    """`[mqtt_buttons]`: the local broker MQTT buttons publish to (issue 19)."""

    host: str
    port: int
    tls: bool
    user: str | None
    password: Secret | None
    ca_file: Path | None


@dataclass(frozen=True, slots=True)
class Settings:
    path: Path
    c8y: C8yMqttSettings
    gateway: GatewaySettings
    buttons: ButtonsSettings
    capture: CaptureSettings
    debounce_seconds: float
    event: EventSettings
    outbox: OutboxSettings
    metrics: MetricsSettings
    kanban: KanbanSettings
    # The line of each (section, key) the file sets, for errors found after loading (FILE:LINE).
    key_lines: Mapping[tuple[str, str], int] = field(default_factory=dict, compare=False,
                                                   repr=False)
    mqtt_buttons: MqttButtonsSettings | None = None  # None: the section is absent or empty


# ---------------------------------------------------------------------------------------------
# Reading the INI text


@dataclass(frozen=True, slots=True)
class _Entry:
    value: str
    line: int


@dataclass(slots=True)
class _Section:
    name: str
    line: int
    entries: dict[str, _Entry] = field(default_factory=dict)
    spelled: dict[str, str] = field(default_factory=dict)


_SECTION = re.compile(r"\[\s*([^\]]+?)\s*\]\s*(?:[;#].*)?")
_INLINE_COMMENT = re.compile(r"\s[;#]")
_VERBATIM = frozenset({"password", "bootstrap_password"})


def _read_ini(text: str, path: Path) -> dict[str, _Section]:
    sections: dict[str, _Section] = {}
    current: _Section | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        match = _SECTION.fullmatch(line)
        if match:
            name = match.group(1)
            key = name.casefold()
            if key in sections:
                raise ConfigError(
                    f"duplicate section [{name}] (first on line {sections[key].line})", path, number
                )
            current = sections[key] = _Section(name, number)
            continue
        if "=" not in line:
            # The line itself is not repeated: it may be a password (a continuation line, or
            # configparser's 'password: ...').
            raise ConfigError(_not_a_key_value(line), path, number)
        if current is None:
            raise ConfigError("a key before the first [section]", path, number)
        name, value = (part.strip() for part in line.split("=", 1))
        if not name:
            raise ConfigError("a value without a key name", path, number)
        key = name.casefold()
        if key in current.entries:
            raise ConfigError(
                f"duplicate key {name!r} in [{current.name}] "
                f"(first on line {current.entries[key].line})",
                path,
                number,
            )
        # The password is taken verbatim, as the original example's configparser read it: a
        # ' #' or quotes may be part of it.
        current.entries[key] = _Entry(value if key in _VERBATIM else _unquote(value), number)
        current.spelled[key] = name
    return sections


def _not_a_key_value(line: str) -> str:
    if line.startswith("["):
        return "a section header needs a closing ']'"
    if ":" in line:
        return "expected 'key = value'; use '=' rather than ':'"
    return "expected 'key = value'"


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    comment = _INLINE_COMMENT.search(value)
    if comment:
        value = value[: comment.start()].rstrip()
    return value


# ---------------------------------------------------------------------------------------------
# The schema: section -> key -> default (None = required). Canonical spelling is the key's.

_SCHEMA: Mapping[str, Mapping[str, str | None]] = {
    "C8YMQTT": {
        "tenant": None,
        "tenantID": "",  # may be left out when the credentials file gives it
        "user": "",  # may be left out: then the credentials file of `dashkanban register`
        "password": "",
        "password_file": "",
        "port": "8883",
        "tls": "yes",
        "allow_insecure": "no",
        "ca_file": "",
        "cert_file": "",
        "key_file": "",
        "rest_url": "",
        "keepalive": "60",
        "bootstrap_user": BOOTSTRAP_USER,
        "bootstrap_password": "",
        "max_inflight": "20",
        "retry_max": "300",
    },
    "gateway": {
        "serial": "",
        "name": "",
        "mode": "gateway",
        "required_interval": "60",
    },
    "buttons": {"file": "MACID.csv", "source": "csv", "cache_ttl": "300"},
    "capture": {"interface": "auto", "detect": "arp, dhcp", "promiscuous": "no"},
    "debounce": {"seconds": "30"},
    "event": {"type": "c8y_MAC_Event", "text": DEFAULT_EVENT_TEXT},
    "outbox": {
        "path": "",  # see default_outbox_path()
        "max_rows": "200000",
        "max_bytes": "100000000",
    },
    "metrics": {"port": "", "log_interval": "300"},
    "kanban": {"alarms": "no", "severity": "MAJOR", "safety": "0.2", "history_days": "730",
               "min_samples": "3", "overdue_severity": "CRITICAL"},
    # port: 1883, or 8883 with tls = yes
    "mqtt_buttons": {"host": "127.0.0.1", "port": "", "tls": "no", "user": "", "password": "",
                     "password_file": "", "ca_file": ""},
}


def _did_you_mean(word: str, choices: list[str]) -> str:
    import difflib  # only for a misspelt name: not part of every start-up

    folded = {c.casefold(): c for c in choices}
    close = difflib.get_close_matches(word.casefold(), list(folded), n=1, cutoff=0.6)
    return f" (did you mean {folded[close[0]]!r}?)" if close else ""


class _Values:
    """Typed access to the checked sections, with file:line for every error."""

    def __init__(self, sections: dict[str, _Section], path: Path) -> None:
        self._sections = sections
        self.path = path
        self.lines: dict[tuple[str, str], int] = {}

    def line_of(self, section: str, key: str) -> int | None:
        sec = self._sections.get(section.casefold())
        if sec is None:
            return None
        entry = sec.entries.get(key.casefold())
        return entry.line if entry else sec.line

    def raw(self, section: str, key: str) -> str:
        sec = self._sections.get(section.casefold())
        entry = sec.entries.get(key.casefold()) if sec else None
        if entry is not None:
            self.lines[(section, key)] = entry.line
            return entry.value
        default = _SCHEMA[section][key]
        if default is None:
            line = sec.line if sec else 1
            raise ConfigError(f"[{section}] needs a {key!r} key", self.path, line)
        return default

    def error(self, section: str, key: str, message: str) -> ConfigError:
        return ConfigError(message, self.path, self.line_of(section, key))

    def parsed(self, section: str, key: str, parse: Callable[[str], T]) -> T:
        text = self.raw(section, key)
        try:
            return parse(text)
        except ValueError as exc:
            raise self.error(section, key, f"{key} = {text}: {exc}") from None

    def path_value(self, section: str, key: str) -> Path | None:
        text = self.raw(section, key)
        if not text:
            return None
        candidate = Path(text).expanduser()
        return candidate if candidate.is_absolute() else (self.path.parent / candidate)


def _bool(text: str) -> bool:
    folded = text.strip().lower()
    if folded in ("yes", "true", "on", "1"):
        return True
    if folded in ("no", "false", "off", "0"):
        return False
    raise ValueError("expected yes or no")


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"out of range ({low} to {high})")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not (value > 0 and value != float("inf")):
        raise ValueError("must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not (value >= 0 and value != float("inf")):
        raise ValueError("must be zero or more")
    return value


def _one_of(choices: tuple[W, ...], *, upper: bool = False) -> Callable[[str], W]:
    """A parser for one of `choices`, returned as the choice itself (its Literal type)."""

    def parse(text: str) -> W:
        value = text.strip().upper() if upper else text.strip().lower()
        for choice in choices:
            if choice == value:
                return choice
        hint = _did_you_mean(value, list(choices))
        raise ValueError(f"expected one of: {', '.join(choices)}{hint}")

    return parse


def _detect(text: str) -> frozenset[Detect]:
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    if not methods:
        raise ValueError(f"name at least one of: {', '.join(DETECT_METHODS)}")
    for method in methods:
        if method not in DETECT_METHODS:
            raise ValueError(
                f"unknown method {method!r}; expected some of: {', '.join(DETECT_METHODS)}"
                f"{_did_you_mean(method, list(DETECT_METHODS))}"
            )
    return frozenset(m for m in DETECT_METHODS if m in methods)


# A width or precision in `[event] text` above this is refused: `{name:>999999999999}` asked
# Python for a terabyte-wide string (MemoryError), and no event text can exceed 16,000 bytes.
MAX_FORMAT_NUMBER = 1000


def render_event_text(template: str, button: Button, trigger: Trigger,
                      kind: PressKind = "single") -> str:
    """The event text for a press of `button` (raises what `str.format` raises); `kind`:
    single, double or long (issue 19)."""
    return template.format(
        name=button.name,
        mac=button.mac,
        serial=button.serial,
        trigger=trigger,
        kind=kind,
        bin=button.bin or "",
        part=button.part or "",
        quantity="" if button.quantity is None else button.quantity,
        location=button.location or "",
    )


# Buttons the template must render for whatever MACID.csv holds: every optional column filled
# (quantity is a number), and none (every optional placeholder is "").
_SAMPLES = (
    ("a button with every optional column", Button(
        name="dashButton_1", mac="ac:63:be:12:34:56", bin="A3", part="M6 screws", quantity=200,
        location="Aisle 2", supplier="Würth", lead_time_days=3.0)),
    ("a button without optional columns", Button(name="dashButton_1", mac="ac:63:be:12:34:56")),
)


def _event_text(text: str) -> str:
    if not text:
        raise ValueError("the event text may not be empty (Cumulocity requires one)")
    try:
        parsed = [(name, spec) for _, name, spec, _ in string.Formatter().parse(text)
                  if name is not None]
    except ValueError as exc:
        raise ValueError(f"bad placeholder: {exc}") from None
    for name, spec in parsed:
        if name not in EVENT_FIELDS:
            raise ValueError(
                f"unknown placeholder {{{name}}}; known: "
                + ", ".join(f"{{{f}}}" for f in EVENT_FIELDS)
                + _did_you_mean(name, list(EVENT_FIELDS))
            )
        if spec and "{" in spec:
            raise ValueError(f"a placeholder inside a format spec ({{{name}:{spec}}}) is not "
                             "supported")
        for number in re.findall(r"\d+", spec or ""):
            if int(number) > MAX_FORMAT_NUMBER:
                raise ValueError(f"the width or precision {number} in {{{name}:{spec}}} is over "
                                 f"{MAX_FORMAT_NUMBER}")
    for what, button in _SAMPLES:
        problem = event_text_problem(text, button)
        if problem is not None:
            raise ValueError(f"cannot be rendered for {what}: {problem}")
    return text


# An event's text is mandatory: Cumulocity refuses a `400` without one (mqtt-static-templates.md
# 400: type and text mandatory; an empty SmartREST field is a missing one), and the REST API an
# event without `text` (docs/protocol.md 2.5, docs/sandbox.md). A text of blanks only is refused
# here too: it says nothing, and whether the platform trims it to empty is [unverified].
EMPTY_TEXT_PROBLEM = "it renders to an empty text, and Cumulocity refuses an event without text"


def event_text_problem(template: str, button: Button) -> str | None:
    """Why `template` cannot be rendered for `button`, or None when it can."""
    try:
        text = render_event_text(template, button, "dhcp")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if not text.strip():
        return EMPTY_TEXT_PROBLEM
    return None


_SERIAL_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def _serial(text: str) -> str:
    if not _SERIAL_RE.fullmatch(text):
        raise ValueError(
            "use 1 to 128 letters, digits, '.', '_' or '-' (no ':', which Cumulocity's client id "
            "reserves)"
        )
    return text


SYSTEM_STATE = Path("/var/lib/dashkanban")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def default_outbox_path(environ: Mapping[str, str], euid: int | None = None,
                        writable: Callable[[Path], bool] = _writable) -> Path:
    """Where the outbox lives when `[outbox] path` is not set.

    The service's state folder (systemd's $STATE_DIRECTORY, /var/lib/dashkanban); for root, that
    folder too; for anyone else who cannot write there (someone trying `replay` on a laptop), the
    XDG state folder, ~/.local/state/dashkanban, rather than a permission error.
    """
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "outbox.sqlite3"
    uid = os.geteuid() if euid is None else euid
    if uid == 0 or writable(SYSTEM_STATE):
        return SYSTEM_STATE / "outbox.sqlite3"
    xdg = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")).expanduser()
                                               / ".local" / "state")
    return Path(xdg) / "dashkanban" / "outbox.sqlite3"


def hostname() -> str:
    """socket.gethostname(), which glibc reads from uname(2) on Linux: without importing socket,
    ~3 ms of every command's start-up (replay's included)."""
    return os.uname().nodename


def default_gateway_serial() -> str:
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", hostname()) or "host"
    return f"dashkanban-{host}"[:128]


# ---------------------------------------------------------------------------------------------
# Loading


def find_config(explicit: Path | None) -> Path:
    """The config file to use: `-c FILE`, else ./config.ini, else /etc/dashkanban/config.ini."""
    if explicit is not None:
        return explicit
    for candidate in DEFAULT_PATHS:
        if candidate.exists():
            return candidate
    others = ", ".join(str(p) for p in DEFAULT_PATHS[1:])
    raise ConfigError(
        f"no config file (also tried {others}); give one with -c FILE", DEFAULT_PATHS[0]
    )


def load_settings(path: Path, environ: Mapping[str, str] | None = None, *,
                  uplink: bool = True, need_credentials: bool = True) -> Settings:
    """Read and validate config.ini. Raises ConfigError naming file, line and key.

    `uplink=False` for a command that does not connect (`replay --dry-run`, `discover`, `kanban
    report`): then `[C8YMQTT]` may be missing (`settings.c8y.tenant` is empty) and needs no
    password; what is there is still checked. Without user, password, password file or client
    certificate in [C8YMQTT], the login comes from the credentials file; `need_credentials=False`
    (for `dashkanban register`, and implied by `uplink=False`) leaves it empty when there is
    none."""
    env = os.environ if environ is None else environ
    try:
        text = read_regular(path, "config file", MAX_CONFIG_BYTES).decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("config file not found", path) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a config file", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", path) from None
    return parse_settings(text, path.absolute(), env, uplink=uplink,
                          need_credentials=need_credentials)


# `[C8YMQTT]` of a command that does not connect, when the section is missing.
NO_UPLINK = C8yMqttSettings(
    tenant="", tenant_id="", user="", password=None, port=8883, tls=True, allow_insecure=False,
    ca_file=None, cert_file=None, key_file=None, rest_url="", keepalive=60,
)


def parse_settings(text: str, path: Path, environ: Mapping[str, str], *,
                   uplink: bool = True, need_credentials: bool = True) -> Settings:
    sections = _read_ini(text, path)
    _check_names(sections, path)
    if "c8ymqtt" not in sections and uplink:
        raise ConfigError(
            "missing section [C8YMQTT] (tenant, tenantID, user, password, port)", path, 1
        )
    v = _Values(sections, path)
    outbox_path = v.path_value("outbox", "path") or default_outbox_path(environ)
    c8y = _c8y_settings(v, environ, outbox_path, need_credentials and uplink, uplink) if (
        "c8ymqtt" in sections) else NO_UPLINK
    metrics_port = v.raw("metrics", "port")
    settings = Settings(
        path=path,
        c8y=c8y,
        gateway=GatewaySettings(
            serial=v.parsed("gateway", "serial", _serial) if v.raw("gateway", "serial") else (
                default_gateway_serial()
            ),
            name=v.raw("gateway", "name") or f"dashkanban gateway {hostname()}",
            mode=v.parsed("gateway", "mode", _one_of(GATEWAY_MODES)),
            required_interval=v.parsed("gateway", "required_interval", _int_in(0, 100_000)),
        ),
        buttons=ButtonsSettings(
            file=v.path_value("buttons", "file") or path.parent / "MACID.csv",
            source=v.parsed("buttons", "source", _one_of(BUTTON_SOURCES)),
            cache_ttl=v.parsed("buttons", "cache_ttl", _non_negative_float),
        ),
        capture=CaptureSettings(
            interface=v.raw("capture", "interface") or "auto",
            detect=v.parsed("capture", "detect", _detect),
            promiscuous=v.parsed("capture", "promiscuous", _bool),
        ),
        debounce_seconds=v.parsed("debounce", "seconds", _positive_float),
        event=EventSettings(
            type=v.parsed("event", "type", _event_type),
            text=v.parsed("event", "text", _event_text),
        ),
        outbox=OutboxSettings(
            path=outbox_path,
            max_rows=v.parsed("outbox", "max_rows", _int_in(1, 100_000_000)),
            max_bytes=v.parsed("outbox", "max_bytes", _int_in(4096, 1 << 40)),
        ),
        metrics=MetricsSettings(
            port=v.parsed("metrics", "port", _int_in(1, 65535)) if metrics_port else None,
            log_interval=v.parsed("metrics", "log_interval", _positive_float),
        ),
        kanban=KanbanSettings(
            alarms=v.parsed("kanban", "alarms", _bool),
            severity=v.parsed("kanban", "severity", _one_of(SEVERITIES, upper=True)),
            safety=v.parsed("kanban", "safety", _non_negative_float),
            history_days=v.parsed("kanban", "history_days", _int_in(1, 36500)),
            min_samples=v.parsed("kanban", "min_samples", _int_in(1, 1000)),
            overdue_severity=v.parsed(
                "kanban", "overdue_severity", _one_of(SEVERITIES, upper=True)
            ),
        ),
        key_lines=v.lines,
        mqtt_buttons=_mqtt_buttons(v, sections, environ),
    )
    _check_conflicts(settings, v)
    return settings


def _mqtt_buttons(v: _Values, sections: dict[str, _Section], environ: Mapping[str, str]
                  ) -> MqttButtonsSettings | None:
    """`[mqtt_buttons]`, read with [C8YMQTT]'s rules for the password (a private config file,
    or a private password_file owned by us); None when the section is absent or empty."""
    s = "mqtt_buttons"
    section = sections.get(s)
    if section is None or not section.entries:
        return None
    host = v.raw(s, "host").strip()
    if not host or "/" in host or " " in host:
        raise v.error(s, "host", f"host = {host}: expected a host name or address, e.g. "
                                 "127.0.0.1")
    tls = v.parsed(s, "tls", _bool)
    port = v.parsed(s, "port", _int_in(1, 65535)) if v.raw(s, "port") else (8883 if tls else 1883)
    user = v.raw(s, "user").strip() or None
    password = _password(v, environ, None, uplink=False, section=s, env=None)
    if password is not None and user is None:
        raise v.error(s, "password", "a password needs a user")
    ca_file = v.path_value(s, "ca_file")
    if ca_file is not None and not tls:
        raise v.error(s, "ca_file", "ca_file is for tls = yes")
    return MqttButtonsSettings(host=host, port=port, tls=tls, user=user, password=password,
                               ca_file=ca_file)


def _check_conflicts(settings: Settings, v: _Values) -> None:
    """Settings that are each valid but not together: refused here, so every command (not only
    the one that would trip over it later) says so alike, with the line."""
    if settings.kanban.alarms and settings.gateway.mode != "gateway":
        raise v.error(
            "kanban", "alarms",
            "[kanban] alarms = yes needs [gateway] mode = gateway (a refill clears alarms on "
            "other buttons' devices, which per-device mode cannot address)",
        )


def _event_type(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", text):
        raise ValueError("use letters, digits, '_', '.' or '-' (e.g. c8y_MAC_Event)")
    return text


def _check_names(sections: dict[str, _Section], path: Path) -> None:
    known = {name.casefold(): name for name in _SCHEMA}
    for key, section in sections.items():
        if key not in known:
            raise ConfigError(
                f"unknown section [{section.name}]{_did_you_mean(section.name, list(_SCHEMA))}",
                path,
                section.line,
            )
        canonical = known[key]
        keys = {k.casefold(): k for k in _SCHEMA[canonical]}
        for entry_key, entry in section.entries.items():
            if entry_key not in keys:
                spelled = section.spelled[entry_key]
                raise ConfigError(
                    f"unknown key {spelled!r} in [{canonical}]"
                    f"{_did_you_mean(spelled, list(_SCHEMA[canonical]))}",
                    path,
                    entry.line,
                )


def _c8y_settings(v: _Values, environ: Mapping[str, str], outbox_path: Path,
                  need_credentials: bool, uplink: bool = True) -> C8yMqttSettings:
    s = "C8YMQTT"
    tenant = v.raw(s, "tenant").strip()
    if not tenant or "/" in tenant or " " in tenant:
        raise v.error(s, "tenant", f"tenant = {tenant}: expected the tenant's host name, "
                                   "e.g. example.cumulocity.com")
    if not _has_login(v):
        # No user, password or certificate here: the device credentials of `dashkanban
        # register` (docs/install.md).
        return _registered_settings(v, environ, tenant, outbox_path, need_credentials)
    for key in ("tenantID", "user"):
        if not _present(v, s, key):
            raise ConfigError(f"[{s}] needs a {key!r} key", v.path, _section_line(v, s))
    tenant_id = v.raw(s, "tenantID").strip()
    if not tenant_id or "/" in tenant_id:
        raise v.error(s, "tenantID", "tenantID must be the tenant's id, e.g. t12345")
    user = v.raw(s, "user").strip()
    if "/" in user:
        prefix, _, user = user.partition("/")
        if prefix != tenant_id:
            raise v.error(
                s, "user", f"user's tenant prefix {prefix!r} differs from tenantID {tenant_id!r}"
            )
    if not user:
        raise v.error(s, "user", "user is empty")
    port = v.parsed(s, "port", _int_in(1, 65535))
    tls = v.parsed(s, "tls", _bool)
    allow_insecure = v.parsed(s, "allow_insecure", _bool)
    _check_transport(v, port, tls, allow_insecure)
    cert_file = v.path_value(s, "cert_file")
    key_file = v.path_value(s, "key_file")
    if key_file is not None and cert_file is None:
        raise v.error(s, "key_file", "key_file needs a cert_file")
    password = _password(v, environ, cert_file, uplink)
    rest_url = _rest_url(v, tenant, tls)
    return _uplink_settings(v, environ, tenant=tenant, tenant_id=tenant_id, user=user,
                            password=password, port=port, tls=tls,
                            allow_insecure=allow_insecure, cert_file=cert_file,
                            key_file=key_file, rest_url=rest_url)


def _uplink_settings(v: _Values, environ: Mapping[str, str], *, tenant: str, tenant_id: str,
                     user: str, password: Secret | None, port: int, tls: bool,
                     allow_insecure: bool, cert_file: Path | None, key_file: Path | None,
                     rest_url: str, credentials_file: Path | None = None) -> C8yMqttSettings:
    """[C8YMQTT] with its login settled (from the section or from `register`'s file): the keys
    read the same way for either, in one place (a second copy once lost two of them)."""
    s = "C8YMQTT"
    return C8yMqttSettings(
        tenant=tenant,
        tenant_id=tenant_id,
        user=user,
        password=password,
        port=port,
        tls=tls,
        allow_insecure=allow_insecure,
        ca_file=v.path_value(s, "ca_file"),
        cert_file=cert_file,
        key_file=key_file,
        rest_url=rest_url,
        keepalive=v.parsed(s, "keepalive", _int_in(5, 3600)),
        credentials_file=credentials_file,
        bootstrap_user=_bootstrap_user(v),
        bootstrap_password=_bootstrap_password(v, environ),
        max_inflight=v.parsed(s, "max_inflight", _int_in(1, 1000)),
        retry_max=v.parsed(s, "retry_max", _int_in(1, 86400)),
    )


def _check_transport(v: _Values, port: int, tls: bool, allow_insecure: bool) -> None:
    s = "C8YMQTT"
    if tls and port == 1883:
        raise v.error(
            s,
            "port",
            "port 1883 is plain MQTT but tls = yes; use port 8883, or set tls = no and "
            "allow_insecure = yes",
        )
    if not tls and not allow_insecure:
        raise v.error(
            s,
            "tls",
            "tls = no sends the password in clear text; set allow_insecure = yes to accept that "
            "(only on a trusted network)",
        )


def _rest_url(v: _Values, tenant: str, tls: bool) -> str:
    rest_url = v.raw("C8YMQTT", "rest_url").strip().rstrip("/")
    if rest_url and not re.match(r"https?://[^/\s]+", rest_url):
        raise v.error("C8YMQTT", "rest_url",
                      f"rest_url = {rest_url}: expected http(s)://host[:port]")
    if not rest_url:
        rest_url = f"https://{tenant}" if tls else f"http://{tenant}"
    return rest_url


def _present(v: _Values, section: str, key: str) -> bool:
    sec = v._sections.get(section.casefold())
    return sec is not None and key.casefold() in sec.entries


LOGIN_KEYS = ("user", "password", "password_file", "cert_file")


def _has_login(v: _Values) -> bool:
    """Whether [C8YMQTT] names a login of its own (then the credentials file is not read)."""
    return any(v.raw("C8YMQTT", key).strip() for key in LOGIN_KEYS)


def _section_line(v: _Values, section: str) -> int:
    sec = v._sections.get(section.casefold())
    return sec.line if sec else 1


def _bootstrap_user(v: _Values) -> str:
    user = v.raw("C8YMQTT", "bootstrap_user").strip()
    if not user or user.count("/") != 1 or user.startswith("/") or user.endswith("/"):
        raise v.error("C8YMQTT", "bootstrap_user",
                      f"bootstrap_user = {user}: expected tenant/user, e.g. {BOOTSTRAP_USER}")
    return user


def _bootstrap_password(v: _Values, environ: Mapping[str, str]) -> Secret | None:
    plain = v.raw("C8YMQTT", "bootstrap_password")
    if plain:
        _check_private(v.path, v.line_of("C8YMQTT", "bootstrap_password"),
                       "holds a bootstrap password")
        return Secret(plain)
    from_env = environ.get(BOOTSTRAP_PASSWORD_ENV, "")
    return Secret(from_env) if from_env else None


def _registered_settings(v: _Values, environ: Mapping[str, str], tenant: str,
                         outbox_path: Path, need_credentials: bool) -> C8yMqttSettings:
    from dashkanban import credentials

    s = "C8YMQTT"
    path = credentials.credentials_path(outbox_path)
    found = credentials.read(path)
    tenant_id = v.raw(s, "tenantID").strip()
    # `register --certificate` leaves a key and a certificate next to it instead.
    key_file = outbox_path.parent / "device-key.pem"  # dashkanban.c8y.est.KEY_NAME
    cert_file = outbox_path.parent / "device-cert.pem"  # dashkanban.c8y.est.CERT_NAME
    enrolled = found is None and key_file.is_file() and cert_file.is_file()
    if enrolled:
        user, password = "", None
    elif found is None:
        if need_credentials:
            raise ConfigError(
                f"no login: [{s}] has no user, password or cert_file, and {path} does not "
                "exist; run `dashkanban register` (or set user and password)",
                v.path, _section_line(v, s))
        user, password = "", None
    else:
        _check_credentials_config_owner(v.path, environ, path)
        if tenant_id and tenant_id != found.tenant_id:
            raise v.error(s, "tenantID", f"tenantID = {tenant_id}, but {path} holds credentials "
                                         f"for tenant {found.tenant_id}")
        tenant_id, user, password = found.tenant_id, found.user, found.password
    if tenant_id and "/" in tenant_id:
        raise v.error(s, "tenantID", "tenantID must be the tenant's id, e.g. t12345")
    port = v.parsed(s, "port", _int_in(1, 65535))
    tls = v.parsed(s, "tls", _bool)
    allow_insecure = v.parsed(s, "allow_insecure", _bool)
    _check_transport(v, port, tls, allow_insecure)
    rest_url = _rest_url(v, tenant, tls)
    return _uplink_settings(v, environ, tenant=tenant, tenant_id=tenant_id, user=user,
                            password=password, port=port, tls=tls,
                            allow_insecure=allow_insecure,
                            cert_file=cert_file if enrolled else None,
                            key_file=key_file if enrolled else None, rest_url=rest_url,
                            credentials_file=path if found is not None else None)


def _check_credentials_config_owner(config: Path, environ: Mapping[str, str], secret: Path
                                     ) -> None:
    """A config that sends the stored credentials somewhere must be ours or root's (or, under
    sudo, the invoking user's): else root, running someone's config, would send the service's
    device password to that person's host. As ssh trusts only files of the user or root."""
    try:
        uid = config.stat().st_uid
    except OSError:
        return
    me = os.geteuid()
    invoker = environ.get("SUDO_UID", "")
    if uid in (me, 0) or (me == 0 and invoker.isdigit() and int(invoker) == uid):
        return
    raise ConfigError(
        f"sends the device credentials of {secret} but belongs to uid {uid}, not to you or "
        f"root; if you trust it, fix it with: sudo chown {me} {config}", config)


def _password(v: _Values, environ: Mapping[str, str], cert_file: Path | None,
              uplink: bool = True, *, section: str = "C8YMQTT",
              env: str | None = PASSWORD_ENV) -> Secret | None:
    """The password of `section` (`[C8YMQTT]`, or `[mqtt_buttons]` with no variable `env`)."""
    s = section
    plain = v.raw(s, "password")
    password_file = v.path_value(s, "password_file")
    if plain and password_file is not None:
        raise v.error(s, "password_file", "give either password or password_file, not both")
    from_env = environ.get(env, "") if env is not None else ""
    if plain or password_file is not None or from_env:
        _check_config_owner(v.path)  # it decides where the password goes
    if plain:
        _check_private(v.path, v.line_of(s, "password"), "holds a password")
        return Secret(plain)
    if password_file is not None:
        line = v.line_of(s, "password_file")
        try:
            data = read_regular(password_file, "password_file", MAX_SECRET_BYTES, owned=True)
            content = data.decode("utf-8").strip()
        except ConfigError as exc:  # not a regular file, too large, someone else's: say where
            detail = exc.message.removeprefix("password_file")
            raise ConfigError(f"password_file {password_file}{detail}", v.path, line) from None
        except OSError as exc:
            raise ConfigError(
                f"password_file {password_file}: {exc.strerror}", v.path, line
            ) from None
        except UnicodeDecodeError:  # its message would quote a byte of the password
            raise ConfigError(
                f"password_file {password_file} is not UTF-8 text", v.path, line
            ) from None
        _check_private(password_file, None, "is a password file")
        if not content:
            raise ConfigError(f"password_file {password_file} is empty", v.path, line)
        return Secret(content)
    if from_env:
        return Secret(from_env)
    if cert_file is not None or not uplink:
        return None
    raise ConfigError(
        f"[C8YMQTT] needs a password (or password_file, ${PASSWORD_ENV}, or cert_file for "
        "certificate login)",
        v.path,
        v.line_of(s, "password"),
    )


def _check_config_owner(path: Path) -> None:
    """A config that sends a password somewhere must be ours or root's (files.py)."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return  # not a file on disk (parse_settings on text): nothing to own
    check_owner(path, uid, "config file")


def _check_private(path: Path, line: int | None, what: str) -> None:
    """Refuse a secret-holding file others can read, as ssh refuses a loose key.

    Group read is accepted only for a private group (every member is us or root; for root, one
    other user): that is how the service installs its config, root:dashkanban 0640.
    """
    try:
        info = path.stat()
    except OSError:
        return
    mode = stat.S_IMODE(info.st_mode)
    loose = bool(mode & 0o007) or (bool(mode & 0o070) and not _private_group(info.st_gid))
    if loose:
        raise ConfigError(
            f"{path} {what} but is readable by group or others (mode {mode:04o}); "
            f"fix it with: chmod 600 {path}",
            path,
            line,
        )


def _private_group(gid: int) -> bool:
    import grp  # only for a group-readable secret file

    me = os.geteuid()
    if me != 0 and gid != os.getegid() and gid not in os.getgroups():
        return False
    allowed = {0, me}
    names = set()
    try:
        names.update(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return False
    members: set[int] = set()
    for name in names:
        try:
            members.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            continue
    primary = {p.pw_uid for p in pwd.getpwall() if p.pw_gid == gid}
    members.update(primary)
    others = members - allowed
    if me == 0 and gid != 0:
        # Root (`sudo dashkanban check`) accepts a file shared with one user through that user's
        # own group, as the service installs it; never a group meant for sharing.
        return len(others) == 1 and others <= primary
    return not others
