"""The button list in the kernel filter, for real: frames sent over a veth pair between two
network namespaces, the program attached by LiveCapture to a raw socket in the other. The kernel
(not the interpreter) decides what reaches Python, at each step of the fallback chain, on an
ENOMEM from a small `optmem_max`, and after a reload of MACID.csv."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from pathlib import Path

import pytest

from dashkanban.capture import Frame, bpf
from dashkanban.capture.filters import kernel_programs, reload_buttons
from dashkanban.capture.live import LiveCapture
from dashkanban.config import Settings
from dashkanban.detect.buttons import Registry
from tests import forge
from tests.e2e.marks import SYNC, Marks
from tests.e2e.netns import Pair, enter, ip, sender
from tests.test_bpf import BUTTON, STRANGER, macs, noise, presses, relayed
from tests.test_filters import settings_for

pytestmark = pytest.mark.netns

ALL = ("arp", "dhcp", "ndp")


class Receiver:
    def __init__(self, pair: Pair, capture: LiveCapture) -> None:
        self.capture = capture
        self.frames: queue.Queue[Frame] = queue.Queue()
        self.failure: list[BaseException] = []
        self.marks = Marks(self.frames, self._alive)  # SYNC's: in every button list here
        self.thread = threading.Thread(target=self._run, args=(pair.ns_b,), daemon=True)
        self.thread.start()

    def _run(self, ns: str) -> None:
        try:
            enter(ns)
            for frame in self.capture.frames():
                self.frames.put(frame)
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            self.failure.append(exc)

    def _alive(self) -> None:
        assert not self.failure, self.failure

    def sync(self, sock: socket.socket) -> None:
        """Numbered marks until the last one sent arrives (the socket is bound with its
        filter); nothing sent before it is left to arrive later."""
        self.marks.sync(sock.send)

    def exchange(self, sock: socket.socket, frames: list[bytes]) -> list[Frame]:
        """Send `frames` and a closing mark; what arrived before exactly that mark."""
        return self.marks.exchange(sock.send, frames)

    def stop(self) -> None:
        self.capture.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        self.capture.close()
        assert not self.failure, self.failure


def as_received(frame: bytes) -> tuple[bytes, int | None]:
    """The kernel strips the outer tag into PACKET_AUXDATA before the filter runs."""
    if frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        return frame[:12] + frame[16:], int.from_bytes(frame[14:16], "big") & 0x0FFF
    return frame, None


STEPS = {"exact": 20, "exact-large": 1250, "last4": 1400, "candidates": 4100}
TAGS = {"untagged": (), "802.1Q": (20,), "QinQ": (300, 30)}


@pytest.mark.parametrize("tags", sorted(TAGS))
@pytest.mark.parametrize("step", sorted(STEPS))
def test_kernel_passes_the_buttons_and_drops_the_others(veth_pair: Pair, step: str, tags: str
                                                        ) -> None:
    vlans = TAGS[tags]
    chain = bpf.button_programs([BUTTON, SYNC, *macs(STEPS[step] - 2)], ALL)
    expected_kind = {"exact": "buttons", "exact-large": "buttons", "last4": "buttons-last4",
                     "candidates": "candidates"}[step]
    assert chain[0].kind == expected_kind
    mine = [*presses(BUTTON, vlans), relayed(BUTTON, vlans)]
    others = [*noise(BUTTON, vlans), relayed(STRANGER, vlans)]
    out = sender(veth_pair)
    receiver = Receiver(veth_pair, LiveCapture(veth_pair.if_b, ALL, programs=chain))
    try:
        receiver.sync(out)
        assert receiver.capture.program == chain[0]
        got = receiver.exchange(out, [frame for pair in zip(mine, others, strict=False)
                                      for frame in pair] + others[len(mine):])
    finally:
        receiver.stop()
        out.close()
    if step == "candidates":
        # Too many buttons for the kernel: every candidate passes, Python matches.
        sent = [f for pair in zip(mine, others, strict=False) for f in pair] + others[len(mine):]
        wanted = [f for f in sent if bpf.run(chain[0].instructions, as_received(f)[0])]
        assert len(wanted) > len(mine)
    else:
        wanted = mine
    assert [(f.data, f.vlan) for f in got] == [as_received(f) for f in wanted]


# What LiveCapture._open says at INFO when the button list is too long for a program: the
# whole-MAC one (BPF_MAXINSNS) and then the last-4-bytes one. Nothing when it fits.
NOTES = {
    "exact": None,
    "last4": "1400 buttons: too many to compare whole MACs in the kernel filter (at least 4200 "
             "instructions, at most 4096); it compares their last 4 bytes and Python the whole "
             "MAC",
    "candidates": "4100 buttons: too many for the kernel filter even by the last 4 bytes of "
                  "their MACs (at least 4100 instructions, at most 4096); it passes every "
                  "candidate and Python matches",
}


@pytest.mark.parametrize("step", sorted(NOTES))
def test_opening_the_socket_says_why_at_info(veth_pair: Pair, step: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    chain = bpf.button_programs([BUTTON, SYNC, *macs(STEPS[step] - 2)], ALL)
    out = sender(veth_pair)
    with caplog.at_level(logging.INFO, "dashkanban.capture.live"):
        receiver = Receiver(veth_pair, LiveCapture(veth_pair.if_b, ALL, programs=chain))
        try:
            receiver.sync(out)  # the socket is open, its filter attached
            got = receiver.exchange(out, presses(BUTTON))
        finally:
            receiver.stop()
            out.close()
    assert [f.data for f in got] == presses(BUTTON)
    note = NOTES[step]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"capturing on {veth_pair.if_b} (arp, dhcp, ndp)"),
        *([("INFO", note)] if note else []),
    ]


def test_enomem_falls_back_to_the_next_program(veth_pair: Pair, caplog: pytest.LogCaptureFixture
                                               ) -> None:
    """A small net.core.optmem_max (20480 on older kernels) refuses the exact list of 1,000
    buttons (about 43 kB charged here): the last-4-bytes program (18 kB) is attached, and the
    capture starts. Re-attaching (a reload) first swaps in the small candidate program, so the
    socket never needs room for two big lists."""
    ip("netns", "exec", veth_pair.ns_b, "sysctl", "-q", "-w", "net.core.optmem_max=30000")
    chain = bpf.button_programs([BUTTON, SYNC, *macs(998)], ALL)
    assert [p.kind for p in chain] == ["buttons", "buttons-last4", "candidates"]
    out = sender(veth_pair)
    receiver = Receiver(veth_pair, LiveCapture(veth_pair.if_b, ALL, programs=chain))
    try:
        with caplog.at_level(logging.WARNING, "dashkanban.capture.live"):
            receiver.sync(out)
            assert receiver.capture.program == chain[1]
            got = receiver.exchange(out, [*noise(BUTTON), *presses(BUTTON)])
            assert receiver.capture.set_filter(chain) == chain[1]  # 18 + 18 kB would not fit
            again = receiver.exchange(out, [*noise(BUTTON), *presses(BUTTON)])
            ip("netns", "exec", veth_pair.ns_b, "sysctl", "-q", "-w", "net.core.optmem_max=10000")
            with pytest.raises(OSError, match="Cannot allocate memory"):
                receiver.capture.set_filter(chain)
            kept = receiver.exchange(out, [*noise(BUTTON), *presses(BUTTON)])
    finally:
        receiver.stop()
        out.close()
    assert [f.data for f in got] == presses(BUTTON)
    assert [f.data for f in again] == presses(BUTTON)
    assert [f.data for f in kept] == presses(BUTTON)  # the kernel kept the program it had
    refused = (f"the kernel refused the button filter (1000 MACs) ({len(chain[0])} "
               "instructions): Cannot allocate memory (net.core.optmem_max); trying the button "
               "filter (1000 MACs by their last 4 bytes)")
    assert [r.getMessage() for r in caplog.records] == [
        refused,
        refused,
        refused,
        f"the kernel refused the button filter (1000 MACs by their last 4 bytes) "
        f"({len(chain[1])} instructions): Cannot allocate memory (net.core.optmem_max); trying "
        "the candidate filter",
    ]


def test_reload_adds_a_button_to_the_open_socket(veth_pair: Pair, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """What SIGHUP does: re-read MACID.csv, hand the registry over, re-attach the filter on the
    open socket; a bad file keeps the old list."""
    settings = settings_for(tmp_path, [f"sync,{SYNC}"])
    buttons = settings.buttons.file
    probe = forge.arp_frame(1, BUTTON, "0.0.0.0", "192.168.10.51")
    registries: list[object] = []
    out = sender(veth_pair)
    capture = LiveCapture(veth_pair.if_b, ("arp", "dhcp"), programs=kernel_programs(settings))
    receiver = Receiver(veth_pair, capture)
    try:
        receiver.sync(out)
        before = receiver.exchange(out, [probe])
        buttons.write_text(f"Name, MAC-Address\nsync,{SYNC}\ndashButton_1,{BUTTON}\n")
        with caplog.at_level(logging.INFO, "dashkanban.capture.filters"):
            registry = reload_buttons(settings, capture, registries.append)
        after = receiver.exchange(out, [probe])
        buttons.write_text("Name, MAC-Address\nbroken,not-a-mac\n")
        with caplog.at_level(logging.INFO, "dashkanban.capture.filters"):
            assert reload_buttons(settings, capture, registries.append) is None
        still = receiver.exchange(out, [probe])
    finally:
        receiver.stop()
        out.close()
    assert before == []
    assert registry is not None
    assert registries == [registry]
    assert BUTTON in registry
    assert [f.data for f in after] == [probe]
    assert [f.data for f in still] == [probe]  # the bad file kept the list
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages[0] == ("INFO", f"reload: 2 buttons from {buttons}; the button filter "
                                   "(2 MACs)")
    assert messages[1][0] == "ERROR"
    assert messages[1][1].startswith(f"reload: {buttons}:2: ")
    assert messages[1][1].endswith("; keeping the buttons loaded before")
    assert len(messages) == 2


def test_reload_racing_a_reopen_reaches_the_next_socket(veth_pair: Pair, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A reload while the reading thread closes its socket to reopen it: the attach finds the
    socket closed (EBADF). The matching has the new list already, so the socket reopened next
    must get the new program too, or the kernel drops the new button's frames without a word;
    one WARNING says what happened."""
    settings = settings_for(tmp_path, [f"sync,{SYNC}"])
    buttons = settings.buttons.file
    probe = forge.arp_frame(1, BUTTON, "0.0.0.0", "192.168.10.51")
    capture = LiveCapture(veth_pair.if_b, ("arp", "dhcp"), programs=kernel_programs(settings))
    reloaded: list[object] = []

    def race() -> None:
        enter(veth_pair.ns_b)
        sock = capture._open()
        assert isinstance(sock, socket.socket)
        assert capture.program == kernel_programs(settings)[0]
        sock.close()  # the reading thread's close, before it forgets the socket
        buttons.write_text(f"Name, MAC-Address\nsync,{SYNC}\ndashButton_1,{BUTTON}\n")
        reloaded.append(reload_buttons(settings, capture, lambda registry: None))
        capture._close_socket(sock)  # ... and now it does

    racer = threading.Thread(target=race)
    with caplog.at_level(logging.INFO, "dashkanban.capture.filters"):
        racer.start()
        racer.join(timeout=10)
    assert not racer.is_alive()
    registry = reloaded[0]
    assert isinstance(registry, Registry)
    assert BUTTON in registry
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "dashkanban.capture.filters"] == [
        ("WARNING", f"reload: 2 buttons from {buttons}; the capture was reopening its socket "
                    "(Bad file descriptor): the new socket gets the button filter (2 MACs), as "
                    "at start")]
    out = sender(veth_pair)
    receiver = Receiver(veth_pair, capture)  # the socket reopened
    try:
        receiver.sync(out)
        assert capture.program == bpf.button_programs([SYNC, BUTTON], ("arp", "dhcp"))[0]
        got = receiver.exchange(out, [probe])
    finally:
        receiver.stop()
        out.close()
    assert [f.data for f in got] == [probe]


def _big_list(tmp_path: Path, rows: list[str]) -> tuple[Path, Settings]:
    settings = settings_for(tmp_path, rows, detect="arp, dhcp, ndp")
    return settings.buttons.file, settings


@pytest.mark.parametrize("optmem", [10000, 1000])
def test_reload_refused_on_the_open_socket_reopens_it(veth_pair: Pair, tmp_path: Path,
                                                      optmem: int,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """999 buttons (their last 4 bytes: 18 kB) on the open socket, then `optmem_max` lowered
    and a reload adding BUTTON: the open socket takes nothing (18 kB + the new program), so the
    capture opens a new socket with the new list, which falls back down the chain as at start
    (10000: the candidate filter) and BUTTON's press arrives. With room for no program at all
    (1000), the old socket goes on with its filter and one ERROR says BUTTON is not heard."""
    others = [f"b{i},{mac}" for i, mac in enumerate(macs(998))]
    buttons, settings = _big_list(tmp_path, [f"sync,{SYNC}", *others])
    ip("netns", "exec", veth_pair.ns_b, "sysctl", "-q", "-w", "net.core.optmem_max=30000")
    old = kernel_programs(settings)
    capture = LiveCapture(veth_pair.if_b, ALL, programs=old)
    out = sender(veth_pair)
    receiver = Receiver(veth_pair, capture)
    try:
        receiver.sync(out)
        assert capture.program == old[1]  # 999 whole MACs (43 kB) do not fit in 30000
        before = receiver.exchange(out, presses(BUTTON))
        ip("netns", "exec", veth_pair.ns_b, "sysctl", "-q", "-w",
           f"net.core.optmem_max={optmem}")
        buttons.write_text(buttons.read_text() + f"dashButton_1,{BUTTON}\n")
        caplog.clear()
        with caplog.at_level(logging.INFO, "dashkanban.capture"):
            registry = reload_buttons(settings, capture, lambda registry: None)
            # The reading thread replaces the socket (or keeps it) when it next wakes.
            for _ in range(200):
                if any(r.name == "dashkanban.capture.live" and r.levelname in ("INFO", "ERROR")
                       for r in caplog.records):
                    break
                time.sleep(0.05)
            receiver.sync(out)
        after = receiver.exchange(out, presses(BUTTON))
    finally:
        receiver.stop()
        out.close()
    assert before == []
    assert registry is not None
    assert BUTTON in registry
    new = kernel_programs(settings, registry)
    assert [p.kind for p in new] == ["buttons", "buttons-last4", "candidates"]
    records = [(r.name.rpartition(".")[2], r.levelname, r.getMessage()) for r in caplog.records]
    reload_line = ("filters", "WARNING",
                   f"reload: 1000 buttons from {buttons}; the kernel refused the button filter "
                   "(1000 MACs) on the open socket (Cannot allocate memory), which filters with "
                   "the button filter (999 MACs by their last 4 bytes) meanwhile: reopening the "
                   "capture socket")
    refused = [("live", "WARNING",
                f"the kernel refused the button filter (1000 MACs) ({len(new[0])} instructions): "
                "Cannot allocate memory (net.core.optmem_max); trying the button filter (1000 "
                "MACs by their last 4 bytes)")] * 4
    refused_last4 = [("live", "WARNING",
                      "the kernel refused the button filter (1000 MACs by their last 4 bytes) "
                      f"({len(new[1])} instructions): Cannot allocate memory (net.core."
                      "optmem_max); trying the candidate filter")] * 2
    if optmem == 10000:
        assert capture.program == new[2]
        assert [f.data for f in after] == presses(BUTTON)  # heard: the candidate filter
        # set_filter on the open socket (bridge and direct, each refused), then the new socket.
        assert records == [
            *refused[:1], *refused_last4[:1], reload_line,
            *refused[:1], *refused_last4[:1],
            ("live", "INFO", f"reopened the capture socket on {veth_pair.if_b} with the "
                             "candidate filter"),
        ]
    else:
        assert capture.program == old[1]
        assert after == []  # the kernel still drops BUTTON's frames: said at ERROR
        assert records == [
            *refused[:1], *refused_last4[:1], reload_line,
            *refused[:1], *refused_last4[:1],
            ("live", "ERROR", f"cannot open a new capture socket on {veth_pair.if_b} for the "
                              "new button list (Cannot allocate memory): the open one keeps "
                              "filtering with the button filter (999 MACs by their last 4 "
                              "bytes), so a button only the new list has is not heard; a "
                              "reload (systemctl reload dashkanban) tries again"),
        ]
