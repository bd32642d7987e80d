"""The device credentials file, `<state directory>/credentials` (docs/install.md, docs/security.md).

`dashkanban register` writes it with the user and password Cumulocity hands out on `70`; every
command reads it when `[C8YMQTT]` names no user, password, password file or client certificate.

    # dashkanban device credentials (from `dashkanban register`) ...
    user = t12345/device_dashkanban-gw-01
    password = ...

It is read as ssh reads a private key: a regular file (no symlink, no FIFO), at most 4 KiB, owned
by the reading user or root, and readable by nobody else (mode 0600 or stricter); anything else is
refused with the fix. It is written the same way: a new file of mode 0600, filled, synced and
renamed into place, so that no moment exists where it is half-written or readable by others.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dashkanban.errors import ConfigError
from dashkanban.secret import Secret

FILE_NAME = "credentials"
MAX_BYTES = 4096
MODE = 0o600


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """A device user: `<tenantID>/<user>` and its password."""

    tenant_id: str
    user: str  # without the "tenantID/" prefix
    password: Secret

    @property
    def username(self) -> str:
        return f"{self.tenant_id}/{self.user}"


def credentials_path(outbox_path: Path) -> Path:
    """The credentials file next to the outbox: the state directory's `credentials`."""
    return outbox_path.parent / FILE_NAME


def render(credentials: DeviceCredentials, written: datetime) -> str:
    return (
        "# dashkanban device credentials (from `dashkanban register`, Cumulocity's device\n"
        f"# registration), written {written.isoformat(timespec='seconds')}.\n"
        "# Keep this file private (mode 0600); `dashkanban register --force` replaces it.\n"
        f"user = {credentials.username}\n"
        f"password = {credentials.password.reveal()}\n"
    )


def parse(text: str, path: Path) -> DeviceCredentials:
    """The credentials in the file's text; ConfigError `FILE:LINE: ...` (never quoting a value
    of the password line)."""
    values: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, eq, value = line.partition("=")
        key = key.strip().casefold()
        if not eq or key not in ("user", "password"):
            raise ConfigError("expected 'user = tenantID/user' or 'password = ...'", path, number)
        if key in values:
            raise ConfigError(f"{key} given twice (first on line {values[key][1]})", path, number)
        values[key] = (value.strip(), number)
    for key in ("user", "password"):
        if not values.get(key, ("", 0))[0]:
            raise ConfigError(f"no {key}: run `dashkanban register --force` to fetch new "
                              "credentials", path, values[key][1] if key in values else None)
    username, user_line = values["user"]
    tenant_id, slash, user = username.partition("/")
    if not slash or not tenant_id or not user or "/" in user:
        raise ConfigError(f"user = {username}: expected tenantID/user", path, user_line)
    return DeviceCredentials(tenant_id, user, Secret(values["password"][0]))


def read(path: Path, *, euid: int | None = None) -> DeviceCredentials | None:
    """The credentials in `path`, or None when there is no such file.

    Refused (ConfigError) unless a regular file, at most MAX_BYTES, owned by us or root, and
    not readable by group or others."""
    me = os.geteuid() if euid is None else euid
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError("is a symbolic link; the credentials file must be a regular file",
                              path) from None
        raise ConfigError(f"cannot read the credentials file: {exc.strerror}", path) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("is not a regular file; the credentials file must be one", path)
        if info.st_size > MAX_BYTES:
            raise ConfigError(f"is {info.st_size} bytes; a credentials file has at most "
                              f"{MAX_BYTES}", path)
        # As ssh: owned by the reading user or root. Root reads the service's own file too
        # (`sudo dashkanban check` with the installed config).
        if info.st_uid not in (me, 0) and me != 0:
            raise ConfigError(f"is owned by uid {info.st_uid}, not by you (uid {me}) or root; "
                              f"fix it with: chown {me} {path}", path)
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(f"holds a password but is readable by group or others (mode "
                              f"{mode:04o}); fix it with: chmod 600 {path}", path)
        data = handle.read(MAX_BYTES + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # its message would quote a byte of the password
        raise ConfigError("the credentials file is not UTF-8 text", path) from None
    return parse(text, path)


def write(path: Path, credentials: DeviceCredentials, written: datetime) -> None:
    """Store the credentials at `path` (mode 0600), creating its folder (mode 0700) if needed."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    temp = path.with_name(f".{path.name}.new")
    temp.unlink(missing_ok=True)  # left by an interrupted register
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), MODE)  # whatever the umask
            out.write(render(credentials, written))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
