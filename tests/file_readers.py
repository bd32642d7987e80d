"""Both ways a filtered capture file is read: in libpcap (ctypes), and by the pure readers with
the interpreter, as when libpcap is not installed. Tests run each capture both ways."""

from __future__ import annotations

import pytest

from dashkanban.capture import libpcap

READERS = ("libpcap", "pure")
MISSING = "libpcap is not installed (libpcap.so.0.8 or libpcap.so.1; Debian: libpcap0.8)"


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
    """The reader a child process (a `dashkanban` command a test runs) uses here: `libpcap`
    when it can be loaded, else `pure`. The project has no switch to force the pure reader in
    a child, so a subprocess test expects the summary line of this one."""
    try:
        libpcap.library()
    except libpcap.UnavailableError:
        return "pure"
    return "libpcap"
