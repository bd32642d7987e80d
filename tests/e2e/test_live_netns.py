"""Live capture for real: two network namespaces joined by a veth pair, frames sent with a raw
socket in one and captured by LiveCapture (kernel BPF, PACKET_AUXDATA) in the other."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dashkanban.capture import Frame
from dashkanban.capture.live import LiveCapture, candidate_filter, default_interface
from dashkanban.detect.decode import Decoder, Sighting
from dashkanban.privileges import grant_hint
from tests import forge
from tests.e2e.marks import Marks
from tests.e2e.netns import Pair, enter, ip, sender

pytestmark = pytest.mark.netns




class Receiver:
    """LiveCapture.frames() in a thread inside namespace B, frames into a queue."""

    def __init__(self, pair: Pair, detect: tuple[str, ...] = ("arp", "dhcp", "ndp")) -> None:
        self.capture = LiveCapture(pair.if_b, detect)
        self.frames: queue.Queue[Frame] = queue.Queue()
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(pair.ns_b,), daemon=True)
        self.thread.start()

    def _run(self, ns: str) -> None:
        try:
            enter(ns)
            for frame in self.capture.frames():
                self.frames.put(frame)
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            self.failure.append(exc)

    def stop(self) -> None:
        self.capture.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "stop() from another thread did not end frames()"
        self.capture.close()


MARK = forge.arp_frame(1, "02:dd:00:00:00:0a", "10.9.9.9", "10.9.9.1")  # a sync frame


def _sync(sock: socket.socket, receiver: Receiver) -> None:
    """Numbered marks until the last one sent arrives (the capture is bound): none is left to
    arrive later, so the closing MARK of a test is the only one in flight."""

    def alive() -> None:
        assert not receiver.failure, receiver.failure

    Marks(receiver.frames, alive).sync(sock.send)


def _until_mark(receiver: Receiver) -> list[Frame]:
    got: list[Frame] = []
    for _ in range(100):
        try:
            frame = receiver.frames.get(timeout=0.1)
        except queue.Empty:
            continue
        if frame.data == MARK:
            return got
        got.append(frame)
    pytest.fail(f"the closing mark never arrived; got {len(got)} frames")


def test_kernel_filter_passes_only_candidates_with_vlan_from_auxdata(veth_pair: Pair) -> None:
    button = "ac:63:be:12:34:56"
    probe = forge.arp_frame(1, button, "0.0.0.0", "192.168.10.51")
    discover_tagged = forge.dhcp_client_frame(button, forge.DISCOVER, vlans=(20,))
    discover_untagged = forge.dhcp_client_frame(button, forge.DISCOVER)
    solicit = forge.ndp_frame(133, button, "fe80::ae63:beff:fe12:3456")
    qinq = forge.arp_frame(1, button, "0.0.0.0", "192.168.10.52", vlans=(300, 30))
    noise = [
        forge.tcp_frame(button, "00:0d:b9:4a:10:01", "192.168.10.51", "1.2.3.4", 50000, 443,
                        payload=b"x" * 200),
        forge.udp_frame(button, "00:0d:b9:4a:10:01", "192.168.10.51", "1.1.1.1", 50000, 53,
                        b"q" * 40),
        forge.udp_frame("00:0d:b9:4a:10:02", button, "192.168.10.2", "192.168.10.51", 67, 68,
                        forge.dhcp(2, button, forge.OFFER)),
        forge.ethernet("01:80:c2:00:00:0e", button, 0x88CC, b"lldp" * 10),
    ]
    frames_out = sender(veth_pair)
    receiver = Receiver(veth_pair)
    try:
        _sync(frames_out, receiver)
        for frame in (noise[0], probe, noise[1], discover_tagged, noise[2], solicit, noise[3],
                      qinq, MARK):
            frames_out.send(frame)
        got = _until_mark(receiver)
    finally:
        receiver.stop()
        frames_out.close()
    assert not receiver.failure
    # The kernel strips the outer tag into PACKET_AUXDATA; a QinQ inner tag stays in the frame.
    assert [(f.data, f.vlan) for f in got] == [
        (probe, None),
        (discover_untagged, 20),
        (solicit, None),
        (qinq[:12] + qinq[16:], 300),
    ]
    decoder = Decoder(("arp", "dhcp", "ndp"))
    sightings = [decoder.decode(f.data, 0.0, f.vlan) for f in got]
    assert sightings == [
        Sighting(button, "arp", 0.0, None, "192.168.10.51"),
        Sighting(button, "dhcp", 0.0, 20, None),
        Sighting(button, "ndp", 0.0, None, "fe80::ae63:beff:fe12:3456"),
        Sighting(button, "arp", 0.0, 30, "192.168.10.52"),
    ]
    assert receiver.capture.received == len(got) + 2  # + the sync and closing marks


def test_filter_follows_detect(veth_pair: Pair) -> None:
    button = "ac:63:be:12:34:56"
    discover = forge.dhcp_client_frame(button, forge.DISCOVER)
    probe = forge.arp_frame(1, button, "0.0.0.0", "192.168.10.51")
    frames_out = sender(veth_pair)
    receiver = Receiver(veth_pair, detect=("arp",))
    try:
        _sync(frames_out, receiver)
        for frame in (discover, probe, MARK):
            frames_out.send(frame)
        got = _until_mark(receiver)
    finally:
        receiver.stop()
        frames_out.close()
    assert [f.data for f in got] == [probe]


def test_reopens_when_the_interface_comes_back(veth_pair: Pair, caplog: pytest.LogCaptureFixture
                                               ) -> None:
    """Interface removed under a running capture: logged, reopened with backoff once it is
    back."""
    frames_out = sender(veth_pair)
    receiver = Receiver(veth_pair)
    try:
        _sync(frames_out, receiver)
        ip("-n", veth_pair.ns_b, "link", "set", veth_pair.if_b, "name", "dkgone")
        ip("-n", veth_pair.ns_b, "link", "set", "dkgone", "down")
        for _ in range(400):  # bounded (20 s): until the capture noticed
            if receiver.capture.reopened or "failed" in caplog.text or "cannot capture" in (
                caplog.text
            ):
                break
            with contextlib.suppress(OSError):  # ENOBUFS: the peer is down, as intended
                frames_out.send(MARK)
            time.sleep(0.05)
        ip("-n", veth_pair.ns_b, "link", "set", "dkgone", "name", veth_pair.if_b)
        ip("-n", veth_pair.ns_b, "link", "set", veth_pair.if_b, "up")
        _sync(frames_out, receiver)
    finally:
        receiver.stop()
        frames_out.close()
    assert not receiver.failure
    assert "reopening in" in caplog.text or "retrying in" in caplog.text


def test_bpf_program_shape() -> None:
    program = candidate_filter(("arp", "dhcp", "ndp"))
    assert program[-2:] == [(0x06, 0, 0, 65536), (0x06, 0, 0, 0)]
    assert all(0 <= jt < 256 and 0 <= jf < 256 for _, jt, jf, _ in program)
    assert len(candidate_filter(("arp",))) < len(program)


def test_default_interface(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "wlan0\t00000000\t0100A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        "eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
    )
    assert default_interface(table) == "eth0"
    table.write_text("Iface\tDestination\n")
    from dashkanban.errors import CaptureError

    with pytest.raises(CaptureError, match="no default route, so 'interface = auto' finds no "
                                           "interface; name one in"):
        default_interface(table)


def test_without_cap_net_raw_exits_2() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and util-linux's setpriv to drop the capability")
    result = subprocess.run(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-net_raw", sys.executable, "-m",
         "dashkanban", "discover", "-i", "lo", "--seconds", "1"],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert result.returncode == 2
    last = result.stderr.splitlines()[-1]
    assert last == ("error: cannot capture on lo: this process lacks CAP_NET_RAW; "
                    f"{grant_hint()}")
    assert "dashkanban service install" in last


def test_discover_live_in_a_namespace(veth_pair: Pair, tmp_path: Path) -> None:
    """The command itself, as a process inside namespace B, while A's button keeps probing."""
    button = "ac:63:be:12:34:56"
    probe = forge.arp_frame(1, button, "0.0.0.0", "192.168.10.51")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", veth_pair.ns_b, sys.executable, "-m", "dashkanban", "discover",
         "-i", veth_pair.if_b, "--seconds", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    frames_out = sender(veth_pair)
    try:
        # Probes until it has listened its 3 s and ended (bounded: 30 s): its 3 s start once
        # the capture is open, which on a loaded machine (Python's start, the imports) may be
        # later than a fixed 2.5 s of probes lasted.
        for _ in range(600):
            if proc.poll() is not None:
                break
            frames_out.send(probe)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    finally:
        frames_out.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    rows = [line for line in out.splitlines() if button in line]
    assert len(rows) == 1
    assert [c.strip() for c in rows[0].split("│")[1:4]] == [
        button, "Amazon Technologies Inc.", "arp"
    ]
    assert f"listening on {veth_pair.if_b} for 3 s..." in err
    assert err.splitlines()[-1].startswith("1 devices, ")
