"""`dashkanban service install|uninstall`: a hardened systemd unit, a system user, /etc/dashkanban.

Two halves, so both can be tested: a pure part that turns what was found (the config text, the
files it names, whether the user exists) into the unit text and a list of actions, and a small part
that acts on them, or only prints them (`--dry-run`). `--root DIR` installs into a system image
(or a test's scratch root): paths are prefixed with DIR, the user is created with `useradd --root`,
and the unit is enabled offline (`systemctl --root`) instead of being started.

Why the unit looks as it does: the original example ran as root from a home folder and its unit was
copied but never enabled. Here the daemon runs as a system user whose only privilege is CAP_NET_RAW
(the raw AF_PACKET socket), behind systemd's sandboxing; the outbox lives in its StateDirectory, the
only place it may write.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dashkanban.config import Settings, _read_ini, find_config, load_settings
from dashkanban.errors import ConfigError, DashkanbanError

log = logging.getLogger(__name__)

UNIT_NAME = "dashkanban.service"
UNIT_PATH = PurePosixPath("/etc/systemd/system") / UNIT_NAME
CONFIG_DIR = PurePosixPath("/etc/dashkanban")
CONFIG_PATH = CONFIG_DIR / "config.ini"
STATE_DIR = PurePosixPath("/var/lib/dashkanban")  # = StateDirectory=dashkanban
OUTBOX_PATH = STATE_DIR / "outbox.sqlite3"
NOLOGIN = "/usr/sbin/nologin"
SECRET_MODE = 0o640  # root-owned, readable by the service's group only
# What the sandbox hides from the service: an executable there cannot start.
HIDDEN_FROM_SERVICE = {
    PurePosixPath("/home"): "ProtectHome=yes",
    PurePosixPath("/root"): "ProtectHome=yes",
    PurePosixPath("/run/user"): "ProtectHome=yes",
    PurePosixPath("/tmp"): "PrivateTmp=yes",  # noqa: S108 - a path checked, not used
    PurePosixPath("/var/tmp"): "PrivateTmp=yes",  # noqa: S108
}
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

# Files the config may name that the service must be able to read once installed:
# (section, key, holds a secret).
_NAMED_FILES = (
    ("C8YMQTT", "password_file", True),
    ("C8YMQTT", "ca_file", False),
    ("C8YMQTT", "cert_file", False),
    ("C8YMQTT", "key_file", True),
)


class ServiceError(DashkanbanError):
    """A step of the install failed (a command, a write); exit code 1."""


# ---------------------------------------------------------------------------------------------
# The pure part: unit text, config rewriting, the list of actions


def unit_text(user: str, group: str, executable: PurePosixPath) -> str:
    """The systemd unit, hardened as far as live capture allows."""
    exec_start = f"{executable} run -c {CONFIG_PATH}"
    return f"""\
# Written by `dashkanban service install`; `dashkanban service uninstall` removes it.
# Add local changes with `systemctl edit dashkanban` rather than editing this file.
[Unit]
Description=dashkanban: Wi-Fi button presses to Cumulocity IoT
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
User={user}
Group={group}
ExecStart={exec_start}
# `systemctl reload dashkanban`: re-read MACID.csv, keep the connection and the capture.
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=5
# Exit code 2 is a configuration error: restarting cannot fix it, so stop and say so once.
RestartPreventExitStatus=2
# READY=1 once capture and the outbox are open; WATCHDOG=1 while every part of it runs, so that
# a hung daemon is killed and restarted. Only the main process may notify.
WatchdogSec=60
NotifyAccess=main
# The one privilege live capture needs (a raw AF_PACKET socket), and no way to gain more.
AmbientCapabilities=CAP_NET_RAW
CapabilityBoundingSet=CAP_NET_RAW
NoNewPrivileges=yes
# The outbox is the only place it writes.
StateDirectory=dashkanban
StateDirectoryMode=0750
UMask=0077
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectClock=yes
ProtectHostname=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectProc=invisible
PrivateMounts=yes
# AF_PACKET for capture, AF_INET/AF_INET6 for Cumulocity, AF_NETLINK for the interfaces,
# AF_UNIX for journald and name lookups.
RestrictAddressFamilies=AF_PACKET AF_INET AF_INET6 AF_NETLINK AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
# Left out on purpose: MemoryDenyWriteExecute= (libffi, used by ctypes and cffi, may need
# writable code pages), PrivateUsers= (CAP_NET_RAW would then not count in the host's network),
# ProcSubset=pid (the default route is read from /proc/net).
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def set_config_values(text: str, values: Mapping[tuple[str, str], str]) -> str:
    """Set `key = value` in the INI text, keeping comments, order and every other line.

    Sections and keys match case-insensitively, as config.py reads them. A missing key goes after
    the last line of its section; a missing section goes at the end.
    """
    wanted = {(s.casefold(), k.casefold()): (k, v) for (s, k), v in values.items()}
    done: set[tuple[str, str]] = set()
    lines = text.splitlines()
    out: list[str] = []
    section: str | None = None
    section_end: dict[str, int] = {}  # section -> index in `out` after its last entry
    for raw in lines:
        stripped = raw.strip()
        if stripped.startswith("[") and "]" in stripped:
            section = stripped[1 : stripped.index("]")].strip().casefold()
            out.append(raw)
            section_end[section] = len(out)
            continue
        if section is not None and "=" in stripped and stripped[0] not in ";#":
            spelled = stripped.split("=", 1)[0].strip()
            key = (section, spelled.casefold())
            if key in wanted:
                out.append(f"{spelled} = {wanted[key][1]}")
                done.add(key)
                section_end[section] = len(out)
                continue
        out.append(raw)
        if section is not None and stripped and stripped[0] not in ";#":
            section_end[section] = len(out)
    missing: dict[str, list[str]] = {}
    spelled_section = {s.casefold(): s for s, _ in values}
    for key, (spelled, value) in wanted.items():
        if key not in done:
            missing.setdefault(key[0], []).append(f"{spelled} = {value}")
    # Insert from the bottom up so earlier indexes stay valid.
    for sec in sorted((s for s in missing if s in section_end), key=lambda s: -section_end[s]):
        at = section_end[sec]
        out[at:at] = missing[sec]
    for sec, entries in missing.items():
        if sec not in section_end:
            out.extend(["", f"[{spelled_section[sec]}]", *entries])
    return "\n".join(out) + "\n"


def mask_password(text: str) -> str:
    """The config text with the value of any `password` key replaced, for printing."""
    out = []
    for raw in text.splitlines():
        key, eq, value = raw.partition("=")
        if eq and key.strip().casefold() in ("password", "bootstrap_password") and value.strip():
            raw = f"{key.rstrip()} = ***"
        out.append(raw)
    return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True)
class CreateUser:
    name: str

    def argv(self, root: Path) -> list[str]:
        at_root = [] if root == Path("/") else ["--root", str(root)]
        return [
            "useradd", *at_root, "--system", "--no-create-home", "--user-group",
            "--home-dir", str(STATE_DIR), "--shell", NOLOGIN, "--comment", "dashkanban service",
            self.name,
        ]


@dataclass(frozen=True, slots=True)
class MakeDir:
    path: PurePosixPath
    mode: int
    owner: str
    group: str


@dataclass(frozen=True, slots=True)
class WriteFile:
    path: PurePosixPath
    content: bytes
    mode: int
    owner: str
    group: str
    shown: str | None  # what --dry-run prints; None: a secret, only its size is printed


@dataclass(frozen=True, slots=True)
class Remove:
    path: PurePosixPath


@dataclass(frozen=True, slots=True)
class Command:
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Note:
    text: str


Action = CreateUser | MakeDir | WriteFile | Remove | Command | Note


@dataclass(frozen=True, slots=True)
class NamedFile:
    """A file the config names, read by the edge: where it came from and what it holds."""

    section: str
    key: str
    source: Path
    content: bytes
    secret: bool
    # A public file the service can already read where it is (a system CA bundle) stays there,
    # so it keeps receiving updates; everything else is copied to /etc/dashkanban.
    in_place: bool = False


@dataclass(frozen=True, slots=True)
class InstallInputs:
    root: Path
    user: str
    group: str
    user_exists: bool
    executable: PurePosixPath
    config_text: str
    buttons: NamedFile | None
    files: tuple[NamedFile, ...]
    # What `dashkanban register` left in the state folder, when the config names no login:
    # the credentials file, or the enrolled key and certificate. Carried into STATE_DIR.
    state_files: tuple[NamedFile, ...] = ()


def installed_name(source: Path) -> str:
    """The file's name in /etc/dashkanban: its own, with only characters an INI value keeps."""
    return _SAFE_NAME.sub("_", source.name) or "file"


def plan_install(inputs: InstallInputs) -> list[Action]:
    """Every step of an install, in order; nothing is touched."""
    actions: list[Action] = []
    if not inputs.user_exists:
        actions.append(CreateUser(inputs.user))
    actions.append(MakeDir(CONFIG_DIR, 0o750, "root", inputs.group))
    values: dict[tuple[str, str], str] = {("outbox", "path"): str(OUTBOX_PATH)}
    taken = {CONFIG_PATH.name: "the config file"}
    named = ([inputs.buttons] if inputs.buttons else []) + list(inputs.files)
    for item in named:
        if item.in_place:
            values[(item.section, item.key)] = str(item.source)
            continue
        name = installed_name(item.source)
        if name in taken:
            raise ConfigError(
                f"[{item.section}] {item.key} = {item.source}: its name {name!r} in {CONFIG_DIR} "
                f"is taken by {taken[name]}; rename one of them"
            )
        taken[name] = f"[{item.section}] {item.key}"
        target = CONFIG_DIR / name
        values[(item.section, item.key)] = str(target)
        shown = None if item.secret else item.content.decode("utf-8", "replace")
        actions.append(WriteFile(target, item.content, SECRET_MODE, "root", inputs.group, shown))
    config = set_config_values(inputs.config_text, values)
    actions.append(
        WriteFile(
            CONFIG_PATH, config.encode(), SECRET_MODE, "root", inputs.group, mask_password(config)
        )
    )
    if inputs.state_files:
        # Into the state folder, which the installed config's outbox path names, owned by the
        # service user alone (the credentials file is read as ssh reads a key: security.md).
        actions.append(MakeDir(STATE_DIR, 0o750, inputs.user, inputs.group))
    for item in inputs.state_files:
        shown = None if item.secret else item.content.decode("utf-8", "replace")
        actions.append(WriteFile(STATE_DIR / item.source.name, item.content,
                                 0o600 if item.secret else 0o644, inputs.user, inputs.group,
                                 shown))
    unit = unit_text(inputs.user, inputs.group, inputs.executable)
    actions.append(WriteFile(UNIT_PATH, unit.encode(), 0o644, "root", "root", unit))
    if inputs.root == Path("/"):
        actions.append(Command(("systemctl", "daemon-reload")))
        actions.append(Command(("systemctl", "enable", "--now", UNIT_NAME)))
    else:
        actions.append(Command(("systemctl", f"--root={inputs.root}", "enable", UNIT_NAME)))
        actions.append(
            Note(
                f"enabled in {inputs.root} but not started: it starts when that system boots"
            )
        )
    return actions


def plan_uninstall(
    root: Path, user: str, *, unit_exists: bool, user_is_ours: bool, purge: bool
) -> list[Action]:
    """Uninstall: the unit and /etc/dashkanban go; the outbox stays unless purged."""
    actions: list[Action] = []
    at_root = root == Path("/")
    if unit_exists:
        if at_root:
            actions.append(Command(("systemctl", "disable", "--now", UNIT_NAME)))
        else:
            actions.append(Command(("systemctl", f"--root={root}", "disable", UNIT_NAME)))
    actions.append(Remove(UNIT_PATH))
    if at_root and unit_exists:
        actions.append(Command(("systemctl", "daemon-reload")))
    actions.append(Remove(CONFIG_DIR))
    if purge:
        actions.append(Remove(STATE_DIR))
        if user_is_ours:
            at = [] if at_root else ["--root", str(root)]
            actions.append(Command(("userdel", *at, user)))
    else:
        actions.append(
            Note(f"kept the outbox in {STATE_DIR} and the user {user} (--purge removes them)")
        )
    return actions


def in_root(root: Path, path: PurePosixPath) -> Path:
    return root / path.relative_to("/")


def describe(action: Action, root: Path) -> str:
    """What --dry-run prints for an action: a shell command, or a file with its content."""
    match action:
        case CreateUser():
            return "$ " + shlex.join(action.argv(root))
        case MakeDir():
            return "$ " + shlex.join([
                "install", "-d", "-m", f"{action.mode:04o}", "-o", action.owner, "-g",
                action.group, str(in_root(root, action.path)),
            ])
        case WriteFile():
            head = (
                f"--- {in_root(root, action.path)} "
                f"(mode {action.mode:04o}, {action.owner}:{action.group})"
            )
            if action.shown is None:
                return f"{head}: a secret of {len(action.content)} bytes, not shown"
            return f"{head}\n{action.shown.rstrip(chr(10))}\n--- end"
        case Remove():
            return "$ " + shlex.join(["rm", "-rf", str(in_root(root, action.path))])
        case Command():
            return "$ " + shlex.join(action.argv)
        case Note():
            return f"# {action.text}"


def executable_problem(executable: PurePosixPath, interpreter: PurePosixPath) -> str | None:
    """Why the service could not start this executable, or None."""
    if not re.fullmatch(r"[A-Za-z0-9/._+-]+", str(executable)):
        # systemd would expand '%' and '$' in ExecStart; plain paths need no quoting at all.
        return f"{executable}: a path with spaces or special characters cannot be an ExecStart"
    for path in (executable, interpreter):
        for hidden, directive in HIDDEN_FROM_SERVICE.items():
            if path.is_relative_to(hidden):
                return (
                    f"{path} is under {hidden}, which the service cannot see ({directive}); "
                    "install dashkanban system-wide first (a venv under /opt, see docs/install.md) "
                    "and run that one's `service install`"
                )
    return None


# ---------------------------------------------------------------------------------------------
# The edge: look at the system, then act on (or print) the plan


def _read_db(root: Path, name: str) -> list[list[str]]:
    path = root / "etc" / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path} not found: --root must hold a system image with /etc/passwd and /etc/group"
        ) from None
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def lookup_user(root: Path, name: str) -> tuple[int, int, str, str] | None:
    """(uid, gid, home, shell) of a user in the root's account database, or None."""
    if root == Path("/"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell
    for fields in _read_db(root, "passwd"):
        if len(fields) >= 7 and fields[0] == name:
            return int(fields[2]), int(fields[3]), fields[5], fields[6]
    return None


def lookup_group(root: Path, name: str) -> int | None:
    if root == Path("/"):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            return None
    for fields in _read_db(root, "group"):
        if len(fields) >= 3 and fields[0] == name:
            return int(fields[2])
    return None


def group_name(root: Path, gid: int) -> str | None:
    if root == Path("/"):
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return None
    for fields in _read_db(root, "group"):
        if len(fields) >= 3 and fields[2] == str(gid):
            return fields[0]
    return None


def find_executable() -> PurePosixPath:
    """The `dashkanban` console script of this installation (not resolved: upgrades keep it)."""
    beside = Path(sys.executable).parent / "dashkanban"
    if beside.is_file() and os.access(beside, os.X_OK):
        return PurePosixPath(beside.absolute())
    found = shutil.which("dashkanban")
    if found:
        return PurePosixPath(Path(found).absolute())
    raise ServiceError(
        f"cannot find the dashkanban executable beside {sys.executable} or on PATH; "
        "install dashkanban with pip or pipx first"
    )


def _check_user_name(name: str) -> None:
    if not _USER_NAME.fullmatch(name):
        raise ConfigError(
            f"--user {name!r}: use a system user name (lower-case letters, digits, '_' or '-', "
            "at most 32, not starting with a digit or '-')"
        )
    if name == "root":
        raise ConfigError("--user root: the service never runs as root; pick a system user name")


def _read_named(
    settings: Settings, section: str, key: str, path: Path, secret: bool, *, may_stay: bool = True
) -> NamedFile:
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{key} {path}: {exc.strerror}", settings.path, settings.key_lines.get((section, key))
        ) from None
    in_place = may_stay and not secret and _public(path)
    return NamedFile(section, key, path.absolute(), content, secret, in_place)


def _public(path: Path) -> bool:
    """Whether any user, so the service too, can read the file where it is."""
    real = PurePosixPath(os.path.realpath(path))
    if any(real.is_relative_to(hidden) for hidden in HIDDEN_FROM_SERVICE):
        return False
    try:
        if not os.stat(real).st_mode & 0o004:
            return False
        return all(os.stat(folder).st_mode & 0o001 for folder in real.parents)
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """`dashkanban service install|uninstall`'s arguments (cli.py builds them)."""

    user: str
    root: Path
    dry_run: bool
    purge: bool = False  # uninstall only
    config: Path | None = None


def gather_install(args: ServiceOptions) -> InstallInputs:
    """Read and check everything the install needs; raises ConfigError with the fix."""
    root: Path = args.root.absolute()
    _check_user_name(args.user)
    config_path = find_config(args.config)
    # The service does not see the caller's environment: the password must be in its files.
    settings = load_settings(config_path, environ={})
    from dashkanban.compose import load_buttons

    buttons = None
    if settings.buttons.source in ("csv", "both") or settings.buttons.file.exists():
        load_buttons(settings.buttons.file)  # refuse to install a buttons file the daemon rejects
        # Always copied: it is part of the service's configuration, edited with it.
        buttons = _read_named(
            settings, "buttons", "file", settings.buttons.file, False, may_stay=False
        )
    c8y = settings.c8y
    state = settings.outbox.path.parent
    enrolled = c8y.cert_file == state / "device-cert.pem"  # from `register --certificate`
    paths = {
        "password_file": _password_file(settings),
        "ca_file": c8y.ca_file,
        "cert_file": None if enrolled else c8y.cert_file,
        "key_file": None if enrolled else c8y.key_file,
    }
    files = tuple(
        _read_named(settings, section, key, path, secret)
        for section, key, secret in _NAMED_FILES
        if (path := paths[key]) is not None
    )
    state_files: list[NamedFile] = []
    if c8y.credentials_file is not None:
        state_files.append(
            _read_named(settings, "C8YMQTT", "credentials", c8y.credentials_file, True))
    if enrolled and c8y.cert_file is not None and c8y.key_file is not None:
        state_files.append(_read_named(settings, "C8YMQTT", "key_file", c8y.key_file, True))
        state_files.append(_read_named(settings, "C8YMQTT", "cert_file", c8y.cert_file, False))
    executable = find_executable()
    interpreter = PurePosixPath(os.path.realpath(sys.executable))
    problem = executable_problem(PurePosixPath(os.path.realpath(executable)), interpreter)
    if problem:
        if root == Path("/"):
            raise ConfigError(problem)
        # A scratch root is for staging and inspection: the unit is written as asked, and the
        # problem is said once, since a real install from this executable would not start.
        log.warning("%s (writing it anyway: --root %s is not the running system)", problem, root)
    existing = lookup_user(root, args.user)
    group = args.user
    if existing is not None:
        group = group_name(root, existing[1]) or args.user
    return InstallInputs(
        root=root,
        user=args.user,
        group=group,
        user_exists=existing is not None,
        executable=executable,
        config_text=config_path.read_text(encoding="utf-8-sig"),
        buttons=buttons,
        files=files,
        state_files=tuple(state_files),
    )


def _password_file(settings: Settings) -> Path | None:
    # Settings keeps the password, not where it came from: read the key again, with the reader
    # that validated it, so both agree on quoting and comments.
    sections = _read_ini(settings.path.read_text(encoding="utf-8-sig"), settings.path)
    c8y = sections.get("c8ymqtt")
    entry = c8y.entries.get("password_file") if c8y else None
    if entry is None or not entry.value:
        return None
    candidate = Path(entry.value).expanduser()
    return candidate if candidate.is_absolute() else settings.path.parent / candidate


def _ids(root: Path, owner: str, group: str) -> tuple[int, int]:
    user = lookup_user(root, owner)
    gid = lookup_group(root, group)
    if user is None or gid is None:
        raise ServiceError(f"no such user or group in {root}: {owner}:{group}")
    return user[0], gid


def _write(root: Path, action: WriteFile) -> None:
    # Written under a temporary name with its final owner and mode, then renamed: at no moment
    # is a file holding a password readable by anyone else.
    target = in_root(root, action.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    uid, gid = _ids(root, action.owner, action.group)
    temp = target.with_name(f".{target.name}.dashkanban-new")
    temp.unlink(missing_ok=True)  # left by an interrupted install
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchown(out.fileno(), uid, gid)
            os.fchmod(out.fileno(), action.mode)
            out.write(action.content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _run(argv: Sequence[str]) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError:
        raise ServiceError(f"{argv[0]} not found: is this a systemd system?") from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{shlex.join(argv)} did not finish within 120 s") from None
    for line in (result.stdout + result.stderr).splitlines():
        if line.strip():
            log.info("%s: %s", argv[0], line.strip())
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise ServiceError(f"{shlex.join(argv)} failed (exit {result.returncode}): {last}")


def apply(action: Action, root: Path) -> None:
    """Carry out one action on the system under `root`."""
    match action:
        case CreateUser():
            _run(action.argv(root))
        case MakeDir():
            path = in_root(root, action.path)
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, *_ids(root, action.owner, action.group))
            path.chmod(action.mode)
        case WriteFile():
            _write(root, action)
        case Remove():
            path = in_root(root, action.path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        case Command():
            _run(action.argv)
        case Note():
            pass


def _carry_out(actions: Sequence[Action], root: Path, dry_run: bool, what: str) -> int:
    log.debug(
        "service %s: %d steps under %s%s", what, len(actions), root, " (dry run)" if dry_run else ""
    )
    if dry_run:
        print(f"# dashkanban service {what} --dry-run: nothing is changed; it would do this:")
        for action in actions:
            print(describe(action, root))
        return 0
    for action in actions:
        log.info("%s", describe(action, root).splitlines()[0])
        apply(action, root)
        if isinstance(action, Note):
            print(action.text)
    return 0


def _need_root(args: ServiceOptions, what: str) -> None:
    if not args.dry_run and os.geteuid() != 0:
        raise ConfigError(
            f"service {what} needs root: run it with sudo (add --dry-run to see what it would do)"
        )


def install_command(args: ServiceOptions) -> int:
    _need_root(args, "install")
    inputs = gather_install(args)
    result = _carry_out(plan_install(inputs), inputs.root, args.dry_run, "install")
    if not args.dry_run:
        print(f"installed {UNIT_NAME}: running as {inputs.user} with only CAP_NET_RAW")
    return result


def uninstall_command(args: ServiceOptions) -> int:
    _need_root(args, "uninstall")
    root: Path = args.root.absolute()
    _check_user_name(args.user)
    user = lookup_user(root, args.user)
    # Only a user that install made (home = the state folder, no login) is ever deleted.
    ours = user is not None and user[2] == str(STATE_DIR) and user[3] == NOLOGIN
    actions = plan_uninstall(
        root,
        args.user,
        unit_exists=in_root(root, UNIT_PATH).exists(),
        user_is_ours=ours,
        purge=args.purge,
    )
    result = _carry_out(actions, root, args.dry_run, "uninstall")
    if not args.dry_run:
        print(f"removed {UNIT_NAME}")
    return result
