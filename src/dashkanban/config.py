"""config.ini -> a frozen, validated Settings value (design section 3).

The `[C8YMQTT]` section is the original example's and its five keys (tenant, tenantID, user,
password, port) keep their meaning. Every other key has a default. Errors carry the file and line:
`FILE:LINE: what is wrong`, with a "did you mean" hint for misspelt names.

A small reader of our own instead of configparser: configparser forgets line numbers, which every
error message here needs.
"""

from __future__ import annotations

import difflib
import grp
import os
import pwd
import re
import socket
import stat
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashkanban.errors import ConfigError
from dashkanban.secret import Secret

DEFAULT_PATHS = (Path("config.ini"), Path("/etc/dashkanban/config.ini"))
PASSWORD_ENV = "DASHKANBAN_PASSWORD"  # noqa: S105 - the variable's name

DETECT_METHODS = ("arp", "dhcp", "ndp")
BUTTON_SOURCES = ("csv", "inventory", "both")
GATEWAY_MODES = ("gateway", "per-device")
SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING")
EVENT_FIELDS = ("name", "mac", "serial", "trigger", "bin", "part", "quantity", "location")


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
    # Seconds: the longest wait between two connection attempts of `run` (it never gives up).
    retry_max: int = 300

    @property
    def username(self) -> str:
        """MQTT and REST user name: `<tenantID>/<user>` (protocol notes 1.2, 3.1)."""
        return f"{self.tenant_id}/{self.user}"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    serial: str
    name: str
    mode: str
    required_interval: int  # minutes, sent as 117


@dataclass(frozen=True, slots=True)
class ButtonsSettings:
    file: Path
    source: str
    cache_ttl: float


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    interface: str
    detect: frozenset[str]
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
    severity: str
    safety: float
    history_days: int


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
    lines: Mapping[tuple[str, str], int] = field(default_factory=dict, compare=False, repr=False)


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
_VERBATIM = frozenset({"password"})


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
        "tenantID": None,
        "user": None,
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
    "event": {"type": "c8y_MAC_Event", "text": "{name} pressed ({mac})"},
    "outbox": {
        "path": "",  # see default_outbox_path()
        "max_rows": "200000",
        "max_bytes": "100000000",
    },
    "metrics": {"port": "", "log_interval": "300"},
    "kanban": {"alarms": "no", "severity": "MAJOR", "safety": "0.2", "history_days": "730"},
}


def _did_you_mean(word: str, choices: list[str]) -> str:
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

    def parsed(self, section: str, key: str, parse: Callable[[str], Any]) -> Any:
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


def _one_of(choices: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().upper() if upper else text.strip().lower()
        if value not in choices:
            hint = _did_you_mean(value, list(choices))
            raise ValueError(f"expected one of: {', '.join(choices)}{hint}")
        return value

    return parse


def _detect(text: str) -> frozenset[str]:
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    if not methods:
        raise ValueError(f"name at least one of: {', '.join(DETECT_METHODS)}")
    for method in methods:
        if method not in DETECT_METHODS:
            raise ValueError(
                f"unknown method {method!r}; expected some of: {', '.join(DETECT_METHODS)}"
                f"{_did_you_mean(method, list(DETECT_METHODS))}"
            )
    return frozenset(methods)


def _event_text(text: str) -> str:
    if not text:
        raise ValueError("the event text may not be empty (Cumulocity requires one)")
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise ValueError(f"bad placeholder: {exc}") from None
    for name in names:
        if name not in EVENT_FIELDS:
            raise ValueError(
                f"unknown placeholder {{{name}}}; known: "
                + ", ".join(f"{{{f}}}" for f in EVENT_FIELDS)
                + _did_you_mean(name, list(EVENT_FIELDS))
            )
    return text


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


def default_gateway_serial() -> str:
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname()) or "host"
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


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate config.ini. Raises ConfigError naming file, line and key."""
    env = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("config file not found", path) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a config file", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", path) from None
    return parse_settings(text, path.absolute(), env)


def parse_settings(text: str, path: Path, environ: Mapping[str, str]) -> Settings:
    sections = _read_ini(text, path)
    _check_names(sections, path)
    if "c8ymqtt" not in sections:
        raise ConfigError(
            "missing section [C8YMQTT] (tenant, tenantID, user, password, port)", path, 1
        )
    v = _Values(sections, path)
    c8y = _c8y_settings(v, environ)
    outbox_path = v.path_value("outbox", "path") or default_outbox_path(environ)
    metrics_port = v.raw("metrics", "port")
    return Settings(
        path=path,
        c8y=c8y,
        gateway=GatewaySettings(
            serial=v.parsed("gateway", "serial", _serial) if v.raw("gateway", "serial") else (
                default_gateway_serial()
            ),
            name=v.raw("gateway", "name") or f"dashkanban gateway {socket.gethostname()}",
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
        ),
        lines=v.lines,
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


def _c8y_settings(v: _Values, environ: Mapping[str, str]) -> C8yMqttSettings:
    s = "C8YMQTT"
    tenant = v.raw(s, "tenant").strip()
    if not tenant or "/" in tenant or " " in tenant:
        raise v.error(s, "tenant", f"tenant = {tenant}: expected the tenant's host name, "
                                   "e.g. example.cumulocity.com")
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
    cert_file = v.path_value(s, "cert_file")
    key_file = v.path_value(s, "key_file")
    if key_file is not None and cert_file is None:
        raise v.error(s, "key_file", "key_file needs a cert_file")
    password = _password(v, environ, cert_file)
    rest_url = v.raw(s, "rest_url").strip().rstrip("/")
    if rest_url and not re.match(r"https?://[^/\s]+", rest_url):
        raise v.error(s, "rest_url", f"rest_url = {rest_url}: expected http(s)://host[:port]")
    if not rest_url:
        rest_url = f"https://{tenant}" if tls else f"http://{tenant}"
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
        retry_max=v.parsed(s, "retry_max", _int_in(1, 86400)),
    )


def _password(v: _Values, environ: Mapping[str, str], cert_file: Path | None) -> Secret | None:
    s = "C8YMQTT"
    plain = v.raw(s, "password")
    password_file = v.path_value(s, "password_file")
    if plain and password_file is not None:
        raise v.error(s, "password_file", "give either password or password_file, not both")
    if plain:
        _check_private(v.path, v.line_of(s, "password"), "holds a password")
        return Secret(plain)
    if password_file is not None:
        line = v.line_of(s, "password_file")
        try:
            content = password_file.read_text(encoding="utf-8").strip()
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
    from_env = environ.get(PASSWORD_ENV, "")
    if from_env:
        return Secret(from_env)
    if cert_file is not None:
        return None
    raise ConfigError(
        f"[C8YMQTT] needs a password (or password_file, ${PASSWORD_ENV}, or cert_file for "
        "certificate login)",
        v.path,
        v.line_of(s, "password"),
    )


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
