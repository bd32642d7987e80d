"""Both ways a filtered capture file is read: in libpcap (ctypes), and by the pure readers with
the interpreter, as when libpcap is not installed. Tests run each capture both ways.

In-process tests switch with `use_reader`; a child process (a `dashkanban` command a test runs)
with `child_prefix`, which for `pure` runs the command in a private mount namespace where each
file the project's loader would open for libpcap is /dev/null: a machine without libpcap, for
that one command, leaving the host as it was."""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from dashkanban.capture import libpcap

READERS = ("libpcap", "pure")
MISSING = "libpcap is not installed (libpcap.so.0.8 or libpcap.so.1; Debian: libpcap0.8)"
RTLD_DI_LINKMAP = 2  # <dlfcn.h>: dlinfo() then gives the library's `struct link_map *`


def use_reader(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pure`: libpcap cannot be loaded (the one thing a test cannot uninstall)."""
    if reader == "libpcap":
        try:
            libpcap.library()
        except libpcap.UnavailableError as exc:
            pytest.skip(f"{exc} (scripts/system-deps.sh installs it)")
        return

    def missing() -> object:
        raise libpcap.UnavailableError(MISSING)

    monkeypatch.setattr(libpcap, "library", missing)


def installed_reader() -> str:
    """The reader a child process uses here when run as it is: `libpcap` when it can be
    loaded, else `pure`. `child_prefix` runs a child with either."""
    try:
        libpcap.library()
    except libpcap.UnavailableError:
        return "pure"
    return "libpcap"


class _LinkMap(ctypes.Structure):  # the head of glibc's `struct link_map` (<link.h>)
    _fields_ = (("l_addr", ctypes.c_void_p), ("l_name", ctypes.c_char_p))


def _loaded_from(name: str) -> Path | None:
    """The file dlopen(name) maps here, symlinks resolved; None when it finds none."""
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    dlinfo = ctypes.CDLL(None).dlinfo  # in libc since glibc 2.34 (Debian bookworm has 2.36)
    dlinfo.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
    dlinfo.restype = ctypes.c_int
    link_map = ctypes.POINTER(_LinkMap)()
    assert dlinfo(lib._handle, RTLD_DI_LINKMAP, ctypes.byref(link_map)) == 0, name
    loaded = link_map.contents.l_name
    assert loaded, name
    return Path(os.path.realpath(loaded.decode()))


def libpcap_files() -> list[Path]:
    """Every file the project's loader (libpcap.library) could open for libpcap here: each name
    it tries, then what ctypes.util.find_library("pcap") answers, each as dlopen finds it."""
    from ctypes.util import find_library

    names = [*libpcap.NAMES, find_library("pcap")]
    found = {_loaded_from(name) for name in names if name is not None}
    return sorted(path for path in found if path is not None)


@functools.cache
def _hiding() -> tuple[list[str], str | None]:
    """The prefix that hides libpcap_files(), and why it cannot be used here (None: it can)."""
    if os.geteuid() != 0:
        return [], "running a command as without libpcap needs root (a mount namespace)"
    unshare = shutil.which("unshare")
    if unshare is None:
        return [], "running a command as without libpcap needs util-linux's unshare"
    files = libpcap_files()
    if not files:
        return [], None  # nothing to hide: this machine has no libpcap
    # A bind mount in a private mount namespace: the child (and what it starts) sees an empty
    # file; the host's /dev/null and library stay as they are.
    mounts = " && ".join(f"mount --bind /dev/null {shlex.quote(str(path))}" for path in files)
    prefix = [unshare, "--mount", "--propagation", "private", "--", "sh", "-c",
              f'{mounts} && exec "$@"', "sh"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30,
                           check=False)
    if probe.returncode != 0:
        return [], f"cannot hide libpcap in a mount namespace here: {probe.stderr.strip()}"
    return prefix, None


def without_libpcap() -> list[str]:
    """A prefix for a child's command line: the command runs as on a machine without libpcap.
    Skips the test when that cannot be done here (not root, no unshare, no mount namespaces)."""
    prefix, reason = _hiding()
    if reason is not None:
        pytest.skip(reason)
    return list(prefix)


def child_prefix(reader: str) -> list[str]:
    """What to put before a child's command so it reads capture files with `reader`: `libpcap`
    runs it as it is (skipped when libpcap is not installed), `pure` without libpcap."""
    if reader == "libpcap":
        if installed_reader() != "libpcap":
            pytest.skip(f"{MISSING} (scripts/system-deps.sh installs it)")
        return []
    if installed_reader() == "pure":
        return []  # the machine is already one without libpcap
    return without_libpcap()
