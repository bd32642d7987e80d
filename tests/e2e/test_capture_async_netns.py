"""LiveCapture.run (the daemon's capture task) and the receive ring, for real: frames sent over a
veth pair between two network namespaces, read on an asyncio loop in the other, through the
PACKET_MMAP ring (capture/ring.py) and through recvmsg (ring_bytes=0)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any, Generic, TypeVar

import pytest

from dashkanban.capture import Frame, bpf
from dashkanban.capture.live import LiveCapture
from dashkanban.capture.ring import (
    BUTTON_RING_BYTES,
    PACKET_IGNORE_OUTGOING,
    RING_BYTES,
    SOL_PACKET,
    Statistics,
)
from tests import forge
from tests.e2e.marks import SYNC, Marks
from tests.e2e.netns import Pair, enter, in_netns, ip, sender

pytestmark = pytest.mark.netns

T = TypeVar("T")
BUTTON = "ac:63:be:12:34:56"
MARK = forge.arp_frame(1, SYNC, "10.9.9.9", "10.9.9.1")


class LoopInNamespace:
    """An asyncio loop on a thread that entered namespace `ns` (sockets opened on it live
    there), as the daemon's loop lives in the host's."""

    def __init__(self, ns: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, args=(ns,), daemon=True)
        self.thread.start()

    def _run(self, ns: str) -> None:
        enter(ns)
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self, coro: Coroutine[Any, Any, T]) -> Task[T]:
        async def create() -> asyncio.Task[T]:
            return asyncio.create_task(coro)

        return Task(self.loop, asyncio.run_coroutine_threadsafe(create(), self.loop).result(10))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        self.loop.close()


class Task(Generic[T]):
    """An asyncio task seen from the test's thread: cancel it, wait for its end."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[T]) -> None:
        self.loop = loop
        self.task = task
        self.ended = threading.Event()
        loop.call_soon_threadsafe(task.add_done_callback, lambda _t: self.ended.set())

    def done(self) -> bool:
        return self.ended.is_set()

    def cancel(self) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)

    def wait(self) -> asyncio.Task[T]:
        assert self.ended.wait(10), "the task did not end"
        return self.task


class Delivered:
    """The frames `run` handed over, and the thread each was handed on."""

    def __init__(self) -> None:
        self.frames: queue.Queue[Frame] = queue.Queue()
        self.threads: set[int] = set()
        self.marks = Marks(self.frames)

    def handle(self, frame: Frame) -> None:
        self.threads.add(threading.get_ident())
        self.frames.put(frame)

    def exchange(self, out: socket.socket, frames: list[bytes]) -> list[Frame]:
        """Send `frames` and a closing mark; what was handed over before exactly that mark."""
        return self.marks.exchange(out.send, frames)

    def sync(self, out: socket.socket) -> None:
        """Numbered marks until the last one sent arrives (the socket is bound): nothing sent
        before it is left to arrive later."""
        self.marks.sync(out.send)


@contextlib.contextmanager
def running(pair: Pair, capture: LiveCapture, handle: Callable[[Frame], None]
            ) -> Iterator[tuple[LoopInNamespace, Task[None]]]:
    loop = LoopInNamespace(pair.ns_b)
    task = loop.start(capture.run(handle))
    try:
        yield loop, task
    finally:
        task.cancel()
        task.wait()
        loop.close()


@pytest.mark.parametrize("ring_bytes", [None, 0], ids=["ring", "recvmsg"])
def test_run_hands_frames_to_handle_on_the_loop_and_stops_when_cancelled(
        veth_pair: Pair, ring_bytes: int | None) -> None:
    probe = forge.arp_frame(1, BUTTON, "0.0.0.0", "192.168.10.51")
    tagged = forge.dhcp_client_frame(BUTTON, forge.DISCOVER, vlans=(20,))
    qinq = forge.arp_frame(1, BUTTON, "0.0.0.0", "192.168.10.52", vlans=(300, 30))
    noise = forge.tcp_frame(BUTTON, "00:0d:b9:4a:10:01", "192.168.10.51", "1.2.3.4", 50000,
                            443, payload=b"x" * 200)
    capture = LiveCapture(veth_pair.if_b, ("arp", "dhcp"), ring_bytes=ring_bytes)
    delivered = Delivered()
    out = sender(veth_pair)
    try:
        with running(veth_pair, capture, delivered.handle) as (loop, task):
            delivered.sync(out)
            ring = capture._ring
            assert (ring and ring.size) == (RING_BYTES if ring_bytes is None else None)
            got = delivered.exchange(out, [noise, probe, tagged, noise, qinq])
            assert not task.done()
            task.cancel()
            assert task.wait().cancelled()  # returns only when cancelled
            assert capture._sock is None  # closed with its ring when the task ended
            assert capture._ring is None
            # Nothing read after the cancellation: a second capture on the interface reads the
            # probe and its closing mark, the first one's handler gets none of them.
            second = Delivered()
            with running(veth_pair, LiveCapture(veth_pair.if_b, ("arp", "dhcp"),
                                                ring_bytes=ring_bytes), second.handle):
                second.sync(out)
                assert [f.data for f in second.exchange(out, [probe])] == [probe]
            assert delivered.frames.empty()
            assert delivered.threads == {loop.thread.ident}
    finally:
        out.close()
    # The kernel strips the outer tag (into the ring's slot header, or PACKET_AUXDATA).
    assert [(f.data, f.vlan) for f in got] == [
        (probe, None),
        (tagged[:12] + tagged[16:], 20),
        (qinq[:12] + qinq[16:], 300),
    ]
    assert all(abs(f.timestamp - time.time()) < 60 for f in got)  # the kernel's wall clock


def test_a_button_filter_gets_a_small_ring(veth_pair: Pair) -> None:
    """Behind the button list only the buttons' frames arrive: 256 KiB, not 2 MiB, of the
    daemon's resident memory (the ring's pages are mapped from the start)."""
    capture = LiveCapture(veth_pair.if_b, ("arp", "dhcp"),
                          programs=bpf.button_programs([SYNC, BUTTON], ("arp", "dhcp")))
    delivered = Delivered()
    out = sender(veth_pair)
    try:
        with running(veth_pair, capture, delivered.handle):
            delivered.sync(out)
            assert capture._ring is not None
            assert capture._ring.size == BUTTON_RING_BYTES
    finally:
        out.close()


def test_run_reopens_a_socket_whose_interface_went_away(
        veth_pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """The interface renamed and downed under the running task: ENETDOWN, reopened with
    backoff once it is back, and frames arrive again through the same task."""
    probe = forge.arp_frame(1, BUTTON, "0.0.0.0", "192.168.10.51")
    capture = LiveCapture(veth_pair.if_b, ("arp", "dhcp"))
    delivered = Delivered()
    out = sender(veth_pair)
    try:
        with caplog.at_level(logging.INFO, "dashkanban.capture.live"), \
                running(veth_pair, capture, delivered.handle) as (_loop, task):
            delivered.sync(out)
            ip("-n", veth_pair.ns_b, "link", "set", veth_pair.if_b, "name", "dkgone")
            ip("-n", veth_pair.ns_b, "link", "set", "dkgone", "down")
            for _ in range(400):  # bounded (20 s): until the task noticed
                if capture.reopened:
                    break
                time.sleep(0.05)
            ip("-n", veth_pair.ns_b, "link", "set", "dkgone", "name", veth_pair.if_b)
            ip("-n", veth_pair.ns_b, "link", "set", veth_pair.if_b, "up")
            delivered.sync(out)
            got = delivered.exchange(out, [probe])
            assert not task.done()
    finally:
        out.close()
    assert [f.data for f in got] == [probe]
    assert capture.reopened >= 1
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failures[0].startswith(f"capture on {veth_pair.if_b} failed: Network is down; "
                                  "reopening in ")
    assert {r.levelname for r in caplog.records if "failed" in r.getMessage()} == {"WARNING"}


def test_run_raises_what_the_handler_raises(veth_pair: Pair) -> None:
    """A bug in the handler is not a socket failure: run() ends with it (the daemon's
    TaskGroup then ends the process), and closes its socket."""
    capture = LiveCapture(veth_pair.if_b, ("arp", "dhcp"))

    def handle(frame: Frame) -> None:
        raise RuntimeError(f"a bug, at a frame of {len(frame.data)} bytes")

    out = sender(veth_pair)
    try:
        with running(veth_pair, capture, handle) as (_loop, task):
            for _ in range(400):  # bounded (20 s): until the socket is bound and reads the mark
                out.send(MARK)
                if task.done():
                    break
                time.sleep(0.05)
            failure = task.wait().exception()
    finally:
        out.close()
    assert isinstance(failure, RuntimeError)
    assert str(failure) == f"a bug, at a frame of {len(MARK)} bytes"
    assert capture._sock is None
    assert capture.reopened == 0


END = forge.arp_frame(1, SYNC, "10.9.9.9", "10.9.9.2")
VENDOR = b"\x2b\xfe" + bytes(254)  # DHCP option 43, 256 bytes


def synced_frames(pair: Pair, capture: LiveCapture, out: socket.socket
                  ) -> Generator[Frame, None, None]:
    """capture.frames(), opened in namespace B (marks sent until one comes back), then read up
    to a closing END frame: the ring is empty and the generator suspended."""
    frames = capture.frames()
    stop = threading.Event()

    def marks() -> None:
        for _ in range(200):  # bounded: 10 s
            if stop.wait(0.05):
                return
            out.send(MARK)

    thread = threading.Thread(target=marks, daemon=True)
    thread.start()
    try:
        first = in_netns(pair.ns_b, lambda: next(frames))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert first.data == MARK
    out.send(END)
    while next(frames).data != END:
        pass
    return frames


def shut(capture: LiveCapture, frames: Generator[Frame, None, None],
         *sockets: socket.socket) -> None:
    """A frames() test's end: the capture stopped, its generator and socket closed, then the
    test's own sockets."""
    capture.stop()
    frames.close()
    capture.close()
    for sock in sockets:
        sock.close()


def as_before_4_20(capture: LiveCapture) -> None:
    """The open socket as on a kernel before 4.20 (no PACKET_IGNORE_OUTGOING): its ring holds
    the host's own frames too, told apart by their slot's sll_pkttype."""
    assert capture._sock is not None
    assert capture._ring is not None
    capture._sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 0)
    capture._ring._outgoing = True


def _wait_for(capture: LiveCapture, packets: int) -> Statistics:
    for _ in range(500):  # bounded (10 s): until the kernel has counted them all
        counts = capture.statistics()
        if counts.packets >= packets:
            return counts
        time.sleep(0.02)
    return capture.statistics()


def test_a_full_ring_drops_and_packet_statistics_count_them(veth_pair: Pair) -> None:
    """A ring of one page holds sixteen frames: thirty sent while nobody reads, the first
    sixteen are kept, fourteen dropped, and PACKET_STATISTICS says so (added up: the kernel
    resets it)."""
    capture = LiveCapture(veth_pair.if_b, ("arp",), ring_bytes=4096)
    frames: Generator[Frame, None, None] = (f for f in ())
    sent = [forge.arp_frame(1, BUTTON, "0.0.0.0", f"192.168.10.{i}") for i in range(1, 31)]
    out = sender(veth_pair)
    try:
        frames = synced_frames(veth_pair, capture, out)
        baseline = capture.statistics()  # the marks that were delivered
        assert baseline.drops == 0
        for frame in sent:  # the generator is suspended: nothing reads the ring
            out.send(frame)
        counts = _wait_for(capture, baseline.packets + 30)
        assert counts == Statistics(baseline.packets + 30, 14)
        assert capture.statistics() == counts  # read again: added up, not reset to 0
        got = [next(frames) for _ in range(16)]  # the ones the ring kept, then room for more
        out.send(MARK)
        got.append(next(frames))
    finally:
        shut(capture, frames, out)
    assert [f.data for f in got] == [*sent[:16], MARK]


def test_the_ring_wraps_across_blocks_in_order_and_skips_our_own_frames(
        veth_pair: Pair) -> None:
    """32 slots in two blocks; 8 rounds of 6 frames wrap the ring one and a half times: every
    frame arrives whole, in order, with its VLAN, also DHCP requests, too long for a slot
    (queued whole on the socket by the kernel). A frame namespace B itself sends is not one."""
    capture = LiveCapture(veth_pair.if_b, ("arp", "dhcp"), ring_bytes=2 * 4096)
    frames: Generator[Frame, None, None] = (f for f in ())
    out = sender(veth_pair)

    mine = sender(veth_pair, "b")
    rounds: list[list[Frame]] = []
    sent: list[list[tuple[bytes, int | None]]] = []
    try:
        frames = synced_frames(veth_pair, capture, out)
        for r in range(8):
            tags = [(10 + i,) if i % 2 else () for i in range(5)]
            batch = [forge.arp_frame(1, BUTTON, "0.0.0.0", f"192.168.{r}.{i}", vlans=tags[i])
                     for i in range(4)]
            # 342 or over 1,000 bytes (a slot holds 190), tagged in one round, not in the next
            batch.append(forge.dhcp_client_frame(BUTTON, forge.DISCOVER, vlans=tags[r % 2],
                                                 extra_options=VENDOR * 3 if r % 3 else b""))
            mine.send(forge.arp_frame(1, "02:dd:00:00:00:0b", "10.8.8.8", "10.8.8.1"))
            for frame in batch:
                out.send(frame)
            out.send(MARK)
            got: list[Frame] = []
            while (frame := next(frames)).data != MARK:
                got.append(frame)
            rounds.append(got)
            sent.append([(f[:12] + f[16:], tag[0]) if tag else (f, None)
                         for f, tag in zip(batch, [*tags[:4], tags[r % 2]], strict=True)])
        counts = capture.statistics()
    finally:
        shut(capture, frames, out, mine)
    assert [[(f.data, f.vlan) for f in got] for got in rounds] == sent
    assert [len(batch[-1][0]) > 1000 for batch in sent] == [False, True, True] * 2 + [False, True]
    assert counts.drops == 0


def test_without_ignore_outgoing_our_frames_are_told_by_sll_pkttype(veth_pair: Pair) -> None:
    """On kernels before 4.20 (no PACKET_IGNORE_OUTGOING) the ring holds this host's own frames
    too: the slot's sll_pkttype (PACKET_OUTGOING) leaves them out, uncounted. Played here by
    switching the option off on the open socket. An own frame too long for its slot also has its
    whole copy queued on the socket: it is read and dropped with the slot, else the next long
    frame (a button's DHCP request) would be handed over with the bytes of our own."""
    capture = LiveCapture(veth_pair.if_b, ("arp", "dhcp"))
    out = sender(veth_pair)

    mine = sender(veth_pair, "b")
    frames: Generator[Frame, None, None] = (f for f in ())
    try:
        frames = synced_frames(veth_pair, capture, out)
        as_before_4_20(capture)
        before = capture.received
        ours = forge.arp_frame(1, "02:dd:00:00:00:0b", "10.8.8.8", "10.8.8.1")
        for _ in range(3):
            mine.send(ours)
        out.send(MARK)
        got = next(frames)
        received = capture.received - before
        packets = capture.statistics().packets
        # Long frames: two of our own (over a slot's 190 bytes, so each also queued whole on the
        # socket), between a button's DISCOVER and REQUEST, each longer than a slot too.
        our_long = [forge.dhcp_client_frame("02:dd:00:00:00:0b", forge.DISCOVER, xid=i,
                                            extra_options=VENDOR) for i in (1, 2)]
        theirs = [forge.dhcp_client_frame(BUTTON, kind, xid=7, extra_options=VENDOR[:64])
                  for kind in (forge.DISCOVER, forge.REQUEST)]
        out.send(theirs[0])
        for frame in our_long:
            mine.send(frame)
        out.send(theirs[1])
        out.send(MARK)
        long_got = []
        while (frame := next(frames)).data != MARK:
            long_got.append(frame.data)
        truncated = capture._ring.truncated
    finally:
        shut(capture, frames, out, mine)
    assert got.data == MARK  # our three frames were in the ring (below), and skipped
    assert received == 1
    assert packets >= 3 + 1  # the kernel put them in the ring: the check is what left them out
    assert all(len(f) > 190 for f in [*our_long, *theirs])
    assert long_got == theirs  # exact bytes: not those of our own frames before them
    assert truncated == 0


def test_run_waits_for_an_interface_that_is_not_there_yet(
        veth_pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """At boot the daemon may start before its interface exists: run() logs it, retries with
    backoff, and captures once the interface is there."""
    ip("-n", veth_pair.ns_b, "link", "set", veth_pair.if_b, "name", "dklater")
    capture = LiveCapture(veth_pair.if_b, ("arp", "dhcp"))
    delivered = Delivered()
    out = sender(veth_pair)
    try:
        with caplog.at_level(logging.INFO, "dashkanban.capture.live"), \
                running(veth_pair, capture, delivered.handle) as (_loop, task):
            for _ in range(400):  # bounded (20 s): until the first attempt failed
                if "cannot capture" in caplog.text:
                    break
                time.sleep(0.05)
            ip("-n", veth_pair.ns_b, "link", "set", "dklater", "name", veth_pair.if_b)
            delivered.sync(out)
            assert not task.done()
    finally:
        out.close()
    first = next(r for r in caplog.records if "cannot capture" in r.getMessage())
    assert first.levelname == "WARNING"
    assert first.getMessage().startswith(f"cannot capture on {veth_pair.if_b}: No such device; "
                                         "retrying in ")
    assert f"capturing on {veth_pair.if_b} (arp, dhcp)" in caplog.text


def test_long_frames_cut_short_when_the_receive_buffer_is_full_are_counted_and_logged(
        veth_pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """The kernel queues the whole copy of a frame longer than a slot only while the socket's
    receive buffer has room. With the smallest buffer and nobody reading, the later of twenty
    long DHCP requests are handed over cut to their slot's 190 bytes, each still its own start
    and in order: counted in statistics().truncated, said once at WARNING, then at DEBUG."""
    capture = LiveCapture(veth_pair.if_b, ("arp", "dhcp"), ring_bytes=2 * 4096)  # 32 slots
    frames: Generator[Frame, None, None] = (f for f in ())
    out = sender(veth_pair)
    sent = [forge.dhcp_client_frame(BUTTON, forge.DISCOVER, xid=i, extra_options=VENDOR)
            for i in range(20)]
    try:
        frames = synced_frames(veth_pair, capture, out)
        assert capture._sock is not None
        capture._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)  # the kernel's least
        with caplog.at_level(logging.DEBUG, "dashkanban.capture.ring"):
            for frame in sent:  # the generator is suspended: nothing reads meanwhile
                out.send(frame)
            out.send(MARK)
            got = []
            while (frame := next(frames)).data != MARK:
                got.append(frame.data)
        counts = capture.statistics()
    finally:
        shut(capture, frames, out)
    assert len(got) == len(sent)
    assert [g if g == s else s[:190] for g, s in zip(got, sent, strict=True)] == got
    cut = sum(1 for g, s in zip(got, sent, strict=True) if g != s)
    assert got[0] == sent[0]  # the first copy always has room
    assert cut > 0
    assert counts.truncated == cut
    assert counts.drops == 0
    records = [r for r in caplog.records if r.name == "dashkanban.capture.ring"]
    assert [r.levelname for r in records] == ["WARNING"] + ["DEBUG"] * (cut - 1)
    assert records[0].getMessage() == (
        f"a frame of {len(sent[0])} bytes was handed over cut to its first 190: the socket's "
        "receive buffer was full, so the kernel could not queue it whole; further ones are "
        "logged at DEBUG and counted (capture statistics: truncated)")


def test_reopen_on_the_loop_hands_over_the_old_socket_frames(
    veth_pair: Pair, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload the open socket refused (ENOMEM: 18 kB of last-4-bytes program on it, 10000
    bytes of `optmem_max`), then reopen(): the loop opens a socket with the new list (here its
    candidate fallback, as at start) and retires the old one. The old button's frames the old
    socket still held when the loop replaced it are handed over, once, before the new
    button's."""
    from dashkanban.capture import live
    from dashkanban.capture.live import FilterRefusedError
    from tests.test_bpf import macs, presses

    # 4 frames a wake-up: the wake-up that sees the reopen leaves 2 of the 6 below in the old
    # socket, for the replacement to hand over.
    monkeypatch.setattr(live, "BATCH", 4)
    detect = ("arp", "dhcp", "ndp")
    others = macs(998)
    old_button = others[0]
    ip("netns", "exec", veth_pair.ns_b, "sysctl", "-q", "-w", "net.core.optmem_max=30000")
    old = bpf.button_programs([SYNC, *others], detect)
    new = bpf.button_programs([SYNC, BUTTON, *others], detect)
    capture = LiveCapture(veth_pair.if_b, detect, programs=old)
    delivered = Delivered()
    out = sender(veth_pair)
    try:
        with running(veth_pair, capture, delivered.handle) as (loop, task):
            delivered.sync(out)
            assert capture.program == old[1]
            ip("netns", "exec", veth_pair.ns_b, "sysctl", "-q", "-w",
               "net.core.optmem_max=10000")
            with pytest.raises(FilterRefusedError) as refused:
                capture.set_filter(new)
            assert refused.value.filtering == old[1]
            # The loop held up while the reopen is asked and the old button's frames arrive,
            # so they wait in the old socket when the loop replaces it.
            held, holding = threading.Event(), threading.Event()

            def hold() -> None:
                holding.set()
                held.wait(10)

            loop.loop.call_soon_threadsafe(hold)
            assert holding.wait(10)
            with caplog.at_level(logging.INFO, "dashkanban.capture.live"):
                capture.reopen()
                for frame in presses(old_button):  # more than one wake-up reads (BATCH)
                    out.send(frame)  # queued in the old socket (its filter passes them)
                held.set()
                for _ in range(200):
                    if capture.program == new[2]:
                        break
                    time.sleep(0.05)
            got = delivered.exchange(out, presses(BUTTON))
            assert not task.done()
    finally:
        out.close()
    assert capture.program == new[2]
    assert [f.data for f in got] == [*presses(old_button), *presses(BUTTON)]
    assert len(delivered.threads) == 1  # all on the loop's thread
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "dashkanban.capture.live"][-1] == (
        "INFO", f"reopened the capture socket on {veth_pair.if_b} with the candidate filter")


def test_a_reopen_hands_over_a_button_frame_behind_a_batch_of_our_own(
    veth_pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On kernels before 4.20 (played as in the test above) the old ring may hold a whole batch
    of this host's own frames, which read() hands over none of: the reopen still reads the old
    ring to its end, so a button's frame behind them is not lost with the old socket."""
    from dashkanban.capture import live

    monkeypatch.setattr(live, "BATCH", 4)
    capture = LiveCapture(veth_pair.if_b, ("arp", "dhcp"))
    out = sender(veth_pair)

    mine = sender(veth_pair, "b")
    frames: Generator[Frame, None, None] = (f for f in ())
    button = forge.arp_frame(1, BUTTON, "0.0.0.0", "192.168.1.50")
    try:
        frames = synced_frames(veth_pair, capture, out)
        as_before_4_20(capture)
        before = capture.statistics().packets
        for _ in range(6):  # more than a batch (4) of our own, then the button's
            mine.send(forge.arp_frame(1, "02:dd:00:00:00:0b", "10.8.8.8", "10.8.8.1"))
        out.send(button)
        _wait_for(capture, before + 7)  # all in the old ring, none read yet
        capture.reopen()
        got = [in_netns(veth_pair.ns_b, lambda: next(frames))]  # the new socket: in B
        out.send(MARK)
        while (frame := next(frames)).data != MARK:
            got.append(frame)
    finally:
        shut(capture, frames, out, mine)
    assert [f.data for f in got] == [button]
