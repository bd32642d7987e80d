"""Reading the files a user points us at as ssh reads its own (issue 13, hole 8).

A FIFO would block `open` or `read` forever and `/dev/zero` would be read until memory runs out,
so only a regular file is read, and only up to a bound. A file that holds a secret, or decides
where one is sent (the config), must belong to the person running dashkanban or to root: root
running a config another user wrote must not read a root-only file into the MQTT password and
send it to that user's host. The check is made on the open descriptor, so the file cannot be
swapped between the check and the read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import stat
from collections.abc import Mapping
from pathlib import Path

from dashkanban.errors import ConfigError

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1 << 20  # config.ini: a few KiB in practice
MAX_BUTTONS_BYTES = 64 << 20  # MACID.csv: 10,000 buttons are about 1 MiB
MAX_SECRET_BYTES = 64 << 10  # a password or credentials file

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_regular(path: Path, what: str, limit: int, *, owned: bool = False) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `limit` bytes (and with
    `owned`, belong to us or root). Raises ConfigError naming `path`; IsADirectoryError for a
    folder and the other OSErrors of `open` as they come, for the caller's own wording."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a file")
            raise ConfigError(f"{what} must be a regular file, but this is {kind}", path)
        if owned:
            check_owner(path, info.st_uid, what)
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{what} is larger than {limit} bytes; is this the right file?", path)
    return data


def check_owner(path: Path, uid: int, what: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a secret-holding file owned by someone other than us or root (as ssh does).

    Under sudo the person invoking is $SUDO_UID: `sudo dashkanban service install` on your own
    config is fine (sudo sets the variable; a user cannot set root's environment)."""
    me = os.geteuid()
    invoker = _sudo_uid(os.environ if environ is None else environ) if me == 0 else None
    if uid in (me, 0) or uid == invoker:
        return
    whom = "root" if me == 0 else f"you ({_user(me)}) or root"
    if invoker is not None:
        whom = f"you ({_user(invoker)}, through sudo) or root"
    raise ConfigError(
        f"{what} holds or directs a password but belongs to {_user(uid)}, not to {whom}; "
        f"if you trust its content, fix it with: sudo chown {_user(me)} {path}",
        path,
    )


def _sudo_uid(environ: Mapping[str, str]) -> int | None:
    text = environ.get("SUDO_UID", "")
    return int(text) if text.isdigit() else None


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` whole, or leave it as it was: a temporary file next to it
    (mode `mode` whatever the umask, and whatever an old file's mode was), written and fsynced,
    renamed over `path`, and the folder fsynced so the rename itself survives a power loss.

    Raises the OSError as it comes; the temporary file is then gone. One writer per path at a
    time (the callers hold a lock): the temporary's name is the path's and the process id."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # a temporary left by a crash keeps its own mode otherwise
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


# MACID.csv's bytes to text: the file read here, its rows parsed by detect/buttons.py's
# parse_buttons (text in, Buttons out); compose.load_buttons does both.
UTF8_BOM = b"\xef\xbb\xbf"
_warned_cp1252: set[Path] = set()  # one warning per file and process (the daemon reads it twice)


def read_buttons_text(path: Path) -> str:
    """The text of MACID.csv, or a ConfigError naming the file (and the line of a bad byte).

    UTF-8, with or without a BOM, is the norm. Anything else is read as Windows-1252, which is
    what Excel writes for "CSV" on a German or Western European Windows (one warning line naming
    the file). Byte offsets in errors count from the start of the file, BOM included."""
    try:
        data = read_regular(path, "buttons file", MAX_BUTTONS_BYTES)
    except FileNotFoundError:
        raise ConfigError(
            "buttons file not found (set [buttons] file in config.ini)", path
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read buttons file: {exc.strerror}", path) from None
    start = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = start + exc.start  # the decoder counts from after the BOM; people from byte 0
    try:
        text = data[start:].decode("cp1252")
    except UnicodeDecodeError as exc:  # bytes Windows-1252 leaves undefined (0x81, 0x8d, ...)
        offset = start + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise ConfigError(
            f"neither UTF-8 nor Windows-1252 text (byte 0x{data[offset]:02x} at offset "
            f"{offset}); save MACID.csv as \"CSV UTF-8\"", path, line
        ) from None
    if path not in _warned_cp1252:
        _warned_cp1252.add(path)
        line = data.count(b"\n", 0, bad) + 1
        log.warning(
            "%s: not UTF-8 (byte 0x%02x at offset %d, line %d): read as Windows-1252; save it "
            "as \"CSV UTF-8\" to be sure", path, data[bad], bad, line,
        )
    return text
