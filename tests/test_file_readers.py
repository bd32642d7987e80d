"""The test helper that runs a child command as on a machine without libpcap (file_readers)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.file_readers import MISSING, child_prefix, libpcap_files, without_libpcap

# The project's own answer to "can libpcap be used here?", as a child process gives it.
PROBE = """\
from dashkanban.capture import libpcap
try:
    libpcap.library()
except libpcap.UnavailableError as exc:
    print("unavailable:", exc)
else:
    print("available")
"""


def probe(prefix: list[str]) -> str:
    done = subprocess.run([*prefix, sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def mounted_on(path: Path) -> bool:
    """Whether this (the host's) mount namespace has anything mounted on `path`."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_child_runs_as_on_a_machine_without_libpcap() -> None:
    files = libpcap_files()
    if not files:
        pytest.skip(f"{MISSING}: every child already runs without it")
    prefix = without_libpcap()
    before = {path: digest(path) for path in files}

    assert probe(prefix) == f"unavailable: {MISSING}\n"
    assert probe([]) == "available\n"
    assert child_prefix("pure") == prefix
    assert child_prefix("libpcap") == []

    # The host is untouched: /dev/null is still the null device, the library still itself.
    null = os.stat("/dev/null")
    assert stat.S_ISCHR(null.st_mode)
    assert (stat.S_IMODE(null.st_mode), null.st_uid, null.st_gid, null.st_rdev) == (
        0o666, 0, 0, os.makedev(1, 3))
    for path, sha in before.items():
        assert path.read_bytes()[:4] == b"\x7fELF", path
        assert digest(path) == sha, path
        assert not mounted_on(path), path


def test_the_hidden_files_are_what_the_loader_opens() -> None:
    """Each file is a real shared object, symlinks resolved: a bind mount on a symlink would
    hide the link's target for every name that leads to it, but only by accident."""
    files = libpcap_files()
    if not files:
        pytest.skip(MISSING)
    for path in files:
        assert path.is_absolute(), path
        assert not path.is_symlink(), path
        assert path.name.startswith("libpcap.so"), path
