"""Least privilege at run time: never root, and know whether we hold CAP_NET_RAW.

Live capture needs one capability, CAP_NET_RAW (a raw AF_PACKET socket). Root holds every
capability, so a bug or a hostile packet in a root process owns the machine; the service runs as a
system user with only CAP_NET_RAW (see `commands/service.py`), and `run` refuses uid 0 unless told.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from dashkanban.errors import EXIT_USAGE, DashkanbanError

log = logging.getLogger(__name__)

CAP_NET_RAW = 13  # linux/capability.h
PROC_STATUS = Path("/proc/self/status")


class RootRefusedError(DashkanbanError):
    """`run` as root without --allow-root: a usage problem, exit code 2."""

    exit_code = EXIT_USAGE


def effective_capabilities(status_text: str) -> int:
    """The CapEff bit mask from the text of /proc/<pid>/status (0 if the line is missing)."""
    for line in status_text.splitlines():
        name, _, value = line.partition(":")
        if name == "CapEff":
            try:
                return int(value.strip(), 16)
            except ValueError:
                return 0
    return 0


def has_cap_net_raw(status_path: Path = PROC_STATUS) -> bool:
    """Whether this process holds CAP_NET_RAW in its effective set right now."""
    try:
        text = status_path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return bool(effective_capabilities(text) >> CAP_NET_RAW & 1)


def interpreter() -> Path:
    """The real Python binary: file capabilities (setcap) work on it, never on a script."""
    return Path(os.path.realpath(sys.executable))


def dedicated_interpreter(executable: str | None = None, prefix: str | None = None,
                          base_prefix: str | None = None) -> bool:
    """Whether this Python binary belongs to this installation alone: a venv made with
    `--copies`, whose interpreter is a file inside the venv rather than a link to the system's
    (docs/install.md). A capability set on any other would reach every Python program."""
    exe = Path(os.path.realpath(executable or sys.executable))
    prefix = prefix if prefix is not None else sys.prefix
    base = base_prefix if base_prefix is not None else sys.base_prefix
    if os.path.realpath(prefix) == os.path.realpath(base):
        return False  # no venv: the system's (or a shared) interpreter
    return exe.is_relative_to(Path(os.path.realpath(prefix)))


def grant_hint(dedicated: bool | None = None) -> str:
    """How to get CAP_NET_RAW without root, for the end of a one-line error: the service, or the
    capability for one command (setpriv), or setcap only on a dedicated interpreter, never on
    the shared one (issue 14; docs/install.md)."""
    service = "run it as the service (sudo dashkanban service install)"
    if dedicated if dedicated is not None else dedicated_interpreter():
        return (f"{service} or grant the capability to this installation's own interpreter: "
                f"sudo setcap cap_net_raw+ep {interpreter()}")
    return (
        f"{service}, or give one command the capability: sudo setpriv --reuid=USER "
        "--regid=GROUP --init-groups --inh-caps=+net_raw --ambient-caps=+net_raw dashkanban run"
        f"; not setcap on {interpreter()}, which every Python program shares (docs/install.md)"
    )


def refuse_root(allow_root: bool, euid: int | None = None) -> None:
    """Raise RootRefusedError when running as uid 0, unless `allow_root` (`run --allow-root`)."""
    uid = os.geteuid() if euid is None else euid
    if uid != 0:
        return
    if allow_root:
        log.warning("running as root (--allow-root); CAP_NET_RAW alone is enough")
        return
    raise RootRefusedError(
        "refusing to run as root: live capture needs only CAP_NET_RAW; "
        f"{grant_hint()}, or pass --allow-root"
    )


def capture_permission_message(interface: str, status_path: Path = PROC_STATUS) -> str:
    """One line for a raw socket refused with EPERM/EACCES, saying whether we hold CAP_NET_RAW."""
    if has_cap_net_raw(status_path):
        return (
            f"cannot capture on {interface}: the kernel refused a raw socket although this process "
            "holds CAP_NET_RAW (a seccomp filter, or a network namespace owned by another user "
            "namespace?)"
        )
    return f"cannot capture on {interface}: this process lacks CAP_NET_RAW; {grant_hint()}"
