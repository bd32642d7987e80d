"""Never root at run time: refuse uid 0, and tell whether CAP_NET_RAW is held, checked in real child
processes run as `nobody` with and without the capability (setpriv), capturing a real frame on a
veth pair in a network namespace the test creates."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from dashkanban.errors import EXIT_USAGE
from dashkanban.privileges import (
    RootRefusedError,
    capture_permission_message,
    dedicated_interpreter,
    effective_capabilities,
    grant_hint,
    has_cap_net_raw,
    interpreter,
    refuse_root,
)
from tests.service_helpers import (
    as_user_prefix,
    is_root,
)

NOBODY = 65534
STATUS = """\
Name:\tpython3
Uid:\t65534\t65534\t65534\t65534
CapInh:\t0000000000002000
CapPrm:\t0000000000002000
CapEff:\t{eff}
CapBnd:\t0000000000002000
"""


@pytest.mark.parametrize(
    ("eff", "mask", "held"),
    [
        ("0000000000002000", 0x2000, True),  # CAP_NET_RAW alone (bit 13)
        ("000001ffffffffff", 0x1FFFFFFFFFF, True),  # root
        ("0000000000000000", 0, False),
        ("0000000000001000", 0x1000, False),  # CAP_NET_ADMIN (12) is not CAP_NET_RAW
        ("zz", 0, False),
    ],
)
def test_effective_capabilities(tmp_path: Path, eff: str, mask: int, held: bool) -> None:
    text = STATUS.format(eff=eff)
    assert effective_capabilities(text) == mask
    status = tmp_path / "status"
    status.write_text(text)
    assert has_cap_net_raw(status) is held


def test_missing_status_means_no_capability(tmp_path: Path) -> None:
    assert has_cap_net_raw(tmp_path / "absent") is False
    assert effective_capabilities("Name:\tx\n") == 0


def test_refuse_root_one_line_exit_2() -> None:
    with pytest.raises(RootRefusedError) as info:
        refuse_root(allow_root=False, euid=0)
    assert info.value.exit_code == EXIT_USAGE == 2
    assert str(info.value) == (
        f"refusing to run as root: live capture needs only CAP_NET_RAW; {grant_hint()}, or pass "
        "--allow-root"
    )
    assert "\n" not in str(info.value)


def test_allow_root_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dashkanban.privileges"):
        refuse_root(allow_root=True, euid=0)
    assert caplog.messages == ["running as root (--allow-root); CAP_NET_RAW alone is enough"]


def test_non_root_passes(caplog: pytest.LogCaptureFixture) -> None:
    refuse_root(allow_root=False, euid=1000)
    assert caplog.messages == []


def test_this_process_as_root_is_refused() -> None:
    if not is_root():
        pytest.skip("the test runs as an ordinary user")
    with pytest.raises(RootRefusedError):
        refuse_root(allow_root=False)


def test_permission_message_says_what_is_missing(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(STATUS.format(eff="0000000000000000"))
    assert capture_permission_message("eth0", status) == (
        f"cannot capture on eth0: this process lacks CAP_NET_RAW; {grant_hint()}"
    )
    status.write_text(STATUS.format(eff="0000000000002000"))
    assert capture_permission_message("eth0", status) == (
        "cannot capture on eth0: the kernel refused a raw socket although this process holds "
        "CAP_NET_RAW (a seccomp filter, or a network namespace owned by another user namespace?)"
    )


def test_the_hint_never_setcaps_a_shared_interpreter(tmp_path: Path) -> None:
    """Issue 14: setcap on the shared /usr/bin/python3 (what a venv links to) would hand the
    capability to every Python program; only a --copies venv's own binary may get it."""
    shared = grant_hint(dedicated=False)
    assert shared == (
        "run it as the service (sudo dashkanban service install), or give one command the "
        "capability: sudo setpriv --reuid=USER --regid=GROUP --init-groups --inh-caps=+net_raw "
        f"--ambient-caps=+net_raw dashkanban run; not setcap on {interpreter()}, which every "
        "Python program shares (docs/install.md)"
    )
    assert "sudo setcap" not in shared
    assert grant_hint(dedicated=True) == (
        "run it as the service (sudo dashkanban service install) or grant the capability to "
        f"this installation's own interpreter: sudo setcap cap_net_raw+ep {interpreter()}"
    )
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    copied = venv / "bin" / "python3"
    copied.write_bytes(b"")
    linked = venv / "bin" / "python"
    linked.symlink_to("/usr/bin/python3")
    assert dedicated_interpreter(str(copied), str(venv), "/usr") is True
    assert dedicated_interpreter(str(linked), str(venv), "/usr") is False
    assert dedicated_interpreter("/usr/bin/python3", "/usr", "/usr") is False


# ---------------------------------------------------------------------------------------------
# Real child processes as nobody, in a network namespace of their own

# An ARP probe from a Dash button's MAC (sender IP 0.0.0.0), as it joins the Wi-Fi.
PROBE_FRAME = (
    "ffffffffffff" "ac63be123456" "0806"  # Ethernet: broadcast, from the button, ARP
    "0001" "0800" "06" "04" "0001"  # Ethernet/IPv4, request
    "ac63be123456" "00000000" "000000000000" "c0a80101"
)

# The child: report the capability, then try to capture on veth rx0 what is sent on its peer tx0.
CHILD = f"""
import socket, sys
from dashkanban.privileges import capture_permission_message, has_cap_net_raw
print("cap", has_cap_net_raw())
try:
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
except PermissionError:
    print(capture_permission_message("rx0"))
    sys.exit(0)
rx.bind(("rx0", 0))
rx.settimeout(5)
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
tx.bind(("tx0", 0))
tx.send(bytes.fromhex("{PROBE_FRAME}"))
frame, addr = rx.recvfrom(2048)
print("captured", frame[:42].hex(), addr[0])
"""


@pytest.fixture
def venv_python(system_dashkanban: Path) -> Path:
    """A system-Python venv's interpreter, since `nobody` cannot reach one under /root."""
    return system_dashkanban.parent / "python"


def in_netns_as_nobody(python: Path, *, net_raw: bool) -> str:
    """Run CHILD as nobody in a new network namespace with a veth pair tx0<->rx0; its stdout."""
    if not is_root() or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, unshare and setpriv to make a namespace and drop to nobody")
    setup = (
        "ip link add name tx0 type veth peer name rx0 && ip link set tx0 up && ip link set rx0 up"
    )
    drop = " ".join(as_user_prefix(NOBODY, net_raw=net_raw))
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", f'{setup} && exec {drop} {python} -c "$CHILD"'],
        capture_output=True, text=True, check=False, timeout=30,
        env={"CHILD": CHILD, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert (done.returncode, done.stderr) == (0, "")
    return done.stdout


def test_nobody_with_only_cap_net_raw_captures(venv_python: Path) -> None:
    assert in_netns_as_nobody(venv_python, net_raw=True) == (
        f"cap True\ncaptured {PROBE_FRAME} rx0\n"
    )


def test_nobody_without_the_capability_is_told_how_to_get_it(venv_python: Path) -> None:
    real = Path(subprocess.run(
        [str(venv_python), "-c", "import os, sys; print(os.path.realpath(sys.executable))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip())
    assert in_netns_as_nobody(venv_python, net_raw=False) == (
        "cap False\n"
        "cannot capture on rx0: this process lacks CAP_NET_RAW; run it as the service (sudo "
        "dashkanban service install), or give one command the capability: sudo setpriv "
        "--reuid=USER --regid=GROUP --init-groups --inh-caps=+net_raw --ambient-caps=+net_raw "
        f"dashkanban run; not setcap on {real}, which every Python program shares "
        "(docs/install.md)\n"
    )
