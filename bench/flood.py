#!/usr/bin/env python3
"""Benchmark: button presses amid a flood of other devices' ARP, live, in network namespaces.

    sudo .venv/bin/python bench/flood.py [--rates 2000,10000,60000,120000,max] [--seconds 3]
        [--detectors dashkanban-candidates,dashkanban-candidates-before] [--ring BYTES]

Two namespaces joined by a veth pair this script makes and removes. From namespace A, one
sender (a Python raw socket, on core 0) sends ARP requests from 5,000 other MACs at each rate, and
amid them 20 buttons pressed once each (an ARP probe, 3 copies 100 ms apart, as a Dash button
does). In namespace B, pinned to core 1, each detector listens on the same traffic in turn:

- dashkanban, the button list in the kernel filter (`[buttons] source = csv`): LiveCapture with
  capture/bpf.py's button program, then the daemon's pipeline (decode, match, debounce);
- dashkanban, the candidate filter (`source = inventory | both`, discover): the same, with the
  candidate program, so every ARP frame reaches Python. Both as the daemon reads them since
  issue 11/16: `LiveCapture.run` on an asyncio loop, `Pipeline.press_handler` per frame, the ring
  (`--ring` bytes);
- dashkanban-candidates-before: the candidate filter as read before (main at 3c16e72):
  `frames()` with one recvmsg() per frame into the socket's default receive buffer, on a thread,
  through `Pipeline.run_presses` as it was then (every candidate decoded in full, then matched:
  `_presses_before`);
- amazon-dash's method: scapy `sniff(iface, filter=<its BPF>, prn=callback)`.

Printed per rate and detector: CPU % of one core used by the detector process while the flood
runs (utime + stime from /proc), that CPU time per frame received (µs: at saturation, the cost of
a frame), frames received and dropped (dashkanban: its socket's PACKET_STATISTICS; scapy: `ss -0
-m`'s `d` counter), presses detected out of 20, and per rate the candidate filter's CPU and µs per
frame after as a ratio to before. Bounded: each run floods for --seconds,
the whole bench stops by itself (a 60 s guard per run). Needs root, iproute2, `ss`, scapy
(the bench extra). Nothing is asserted: the figures go to README.md and docs/capture.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

if TYPE_CHECKING:
    from dashkanban.capture import Frame
    from dashkanban.capture.live import LiveCapture
    from dashkanban.detect.buttons import Registry
    from dashkanban.detect.pipeline import Pipeline
    from dashkanban.detect.presses import Press

BUTTONS = 20
OTHERS = 5000
COPIES = 3  # a press: the same ARP probe 3 times, 100 ms apart
DEAD_TIME = 1.0
AMAZON_BPF = "arp or (udp and src port 68 and dst port 67 and src host 0.0.0.0)"
DETECTORS = ("dashkanban-list", "dashkanban-candidates", "dashkanban-candidates-before",
             "amazon-dash")
RUN_GUARD = 60.0  # seconds: the longest one run may take before it is abandoned
CLK_TCK = os.sysconf("SC_CLK_TCK")
RING_ENV = "DASHKANBAN_FLOOD_RING"  # --ring, handed to the workers


def button_mac(i: int) -> str:
    return f"ac:63:be:00:00:{i:02x}"


def other_mac(i: int) -> str:
    return f"3c:22:fb:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


# ---------------------------------------------------------------------------------------------
# The detectors (run as `flood.py --worker KIND IFACE`, inside namespace B)


def worker(kind: str, interface: str) -> None:
    buttons = [button_mac(i) for i in range(BUTTONS)]
    if kind == "amazon-dash":
        amazon_dash(interface, buttons)
        return
    from dashkanban.capture.bpf import button_programs, candidate_program
    from dashkanban.capture.live import LiveCapture
    from dashkanban.config import EventSettings
    from dashkanban.detect.buttons import Button, Registry
    from dashkanban.detect.pipeline import Pipeline

    detect = ("arp", "dhcp")
    programs = (button_programs(buttons, detect) if kind.startswith("dashkanban-list")
                else (candidate_program(detect),))
    registry = Registry(Button(f"button_{i}", mac) for i, mac in enumerate(buttons))
    pipeline = Pipeline(registry, EventSettings("c8y_MAC_Event", "{name}"), detect=detect,
                        dead_time=DEAD_TIME)
    before = kind.endswith("-before")
    # Before (main at 3c16e72): frames() on a thread of its own, one recvmsg() per frame into
    # the socket's default receive buffer. After: run() on an event loop, the receive ring.
    ring = os.environ.get(RING_ENV)
    capture = LiveCapture(interface, detect, programs=programs,
                          ring_bytes=0 if before else int(ring) if ring else None)
    found: list[str] = []

    def ready() -> None:
        for _ in range(500):
            if capture._sock is not None:  # bound, filter attached
                print("ready", flush=True)
                return
            time.sleep(0.01)

    threading.Thread(target=ready, daemon=True).start()
    if before:
        signal.signal(signal.SIGTERM, lambda _s, _f: capture.stop())
        for press in _presses_before(capture.frames(), registry, detect):
            found.append(press.button.mac)
    else:
        asyncio.run(_run_async(capture, pipeline, found))
    stats = capture.statistics()
    print(json.dumps({"presses": sorted(set(found)), "received": capture.received,
                      "drops": stats.drops}), flush=True)


def _presses_before(frames: Iterable[Frame], registry: Registry,
                    detect: tuple[str, ...]) -> Iterator[Press]:
    """`Pipeline.run_presses` as it was at 3c16e72, kept here so that "before" stays before
    now that the pipeline matches first: every candidate decoded in full into a Sighting (MAC and
    IP as text), then matched against the registry and debounced on the monotonic clock."""
    from dashkanban.detect.decode import Decoder
    from dashkanban.detect.presses import Debouncer

    decode = Decoder(detect).decode
    feed = Debouncer(registry, DEAD_TIME).feed
    for timestamp, data, vlan in frames:
        sighting = decode(data, timestamp, vlan)
        if sighting is not None:
            press = feed(sighting, time.monotonic())
            if press is not None:
                yield press


async def _run_async(capture: LiveCapture, pipeline: Pipeline, found: list[str]) -> None:
    """What the daemon's capture task does: `LiveCapture.run` with the pipeline's per-frame
    handler, presses handed on (here: their MACs noted)."""

    def on_press(press: Press) -> None:
        found.append(press.button.mac)

    task = asyncio.create_task(capture.run(pipeline.press_handler(on_press, time.monotonic)))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def amazon_dash(interface: str, buttons: list[str]) -> None:
    from scapy.all import ARP, DHCP, Ether, sniff  # its import time is not measured

    known = set(buttons)
    started: dict[str, float] = {}
    found: set[str] = set()
    received = [0]

    def press(mac: str) -> None:
        if mac not in known:
            return
        now = time.monotonic()
        first = started.get(mac)
        if first is not None and now - first < DEAD_TIME:
            return
        started[mac] = now
        found.add(mac)

    def callback(pkt: object) -> None:  # as amazon-dash: ARP sender or the Ethernet source
        received[0] += 1
        if pkt.haslayer(ARP):  # type: ignore[attr-defined]
            if pkt[ARP].op == 1:  # type: ignore[index]
                press(pkt[ARP].hwsrc.lower())  # type: ignore[index]
        elif pkt.haslayer(DHCP):  # type: ignore[attr-defined]
            press(pkt[Ether].src.lower())  # type: ignore[index]

    stopping = threading.Event()

    def stop(_s: int, _f: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    sniff(iface=interface, filter=AMAZON_BPF, prn=callback, store=0,
          stop_filter=lambda _p: stopping.is_set(), timeout=RUN_GUARD,
          started_callback=lambda: print("ready", flush=True))
    print(json.dumps({"presses": sorted(found), "received": received[0]}), flush=True)


# ---------------------------------------------------------------------------------------------
# Namespaces, traffic, measurement


@contextmanager
def namespaces() -> Iterator[tuple[str, str, str, str]]:
    from tests.e2e.netns import ip

    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b, if_a, if_b = f"dk-fl-a-{tag}", f"dk-fl-b-{tag}", f"dfa{tag}", f"dfb{tag}"
    try:
        ip("netns", "add", ns_a)
        ip("netns", "add", ns_b)
        ip("link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
           "netns", ns_b)
        for name, iface in ((ns_a, if_a), (ns_b, if_b)):
            ip("netns", "exec", name, "sysctl", "-q", "-w",
               f"net.ipv6.conf.{iface}.disable_ipv6=1")
            ip("-n", name, "link", "set", iface, "up")
        yield ns_a, ns_b, if_a, if_b
    finally:
        for name in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20,
                           check=False)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def waiting_seconds(pid: int) -> float:
    """Time the process was runnable but waited for a CPU (the kernel's schedstat): a detector
    that drops while it waits is starved by the machine's other work, not too slow."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def socket_drops(ns: str, pid: int) -> int | None:
    """Frames the worker's packet socket dropped (a full receive buffer): `ss -0 -m`'s `d`."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-0", "-m", "-n", "-p"],
                         capture_output=True, text=True, timeout=20, check=False).stdout
    lines = out.splitlines()
    for index, line in enumerate(lines):
        if f"pid={pid}," in line:
            for follow in lines[index : index + 2]:  # skmem on the same line or the next
                match = re.search(r"skmem:\(.*\bd(\d+)\)", follow)
                if match:
                    return int(match.group(1))
    return None


class Traffic:
    """The frames: a flood of ARP requests from OTHERS MACs and the buttons' probes."""

    def __init__(self) -> None:
        from tests import forge

        rng = random.Random(16)
        self.flood = [forge.arp_frame(1, other_mac(i), f"10.{i >> 16 & 255}.{i >> 8 & 255}."
                                      f"{i & 255 or 1}", "10.0.0.1") for i in range(OTHERS)]
        rng.shuffle(self.flood)
        self.probes = [forge.arp_frame(1, button_mac(i), "0.0.0.0", f"10.1.0.{i + 1}")
                       for i in range(BUTTONS)]
        self.sync = forge.arp_frame(1, button_mac(99), "10.9.9.9", "10.9.9.1")

    def send(self, sock: socket.socket, rate: float | None, seconds: float) -> tuple[int, float]:
        """Flood at `rate` frames/s (None: as fast as this sender goes) for `seconds`, with the
        presses spread over it. Returns (flood frames sent, seconds taken)."""
        send = sock.send
        flood = self.flood
        n_flood = len(flood)
        # (time offset, probe): each button once, COPIES copies 100 ms apart
        plan = sorted((0.1 + (seconds - 0.5) * i / BUTTONS + 0.1 * c, i)
                      for i in range(BUTTONS) for c in range(COPIES))
        p = 0
        sent = 0
        started = time.perf_counter()
        deadline = started + seconds
        batch = 250 if rate is None else max(1, min(250, int(rate / 2000)))
        chunks = [flood[i : i + batch] for i in range(0, n_flood - batch + 1, batch)]
        c = 0
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            elapsed = now - started
            while p < len(plan) and plan[p][0] <= elapsed:
                send(self.probes[plan[p][1]])
                p += 1
            if rate is not None and sent >= rate * elapsed:
                time.sleep(0.0002)
                continue
            try:
                for frame in chunks[c]:
                    send(frame)
                    sent += 1
            except OSError:  # ENOBUFS: the sender outruns the link; go on
                pass
            c = (c + 1) % len(chunks)
        for probe in plan[p:]:
            send(self.probes[probe[1]])
        return sent, time.perf_counter() - started


def run_one(kind: str, rate: float | None, seconds: float, ns: tuple[str, str, str, str],
            traffic: Traffic, sock: socket.socket, nice: int = 0) -> dict[str, object]:
    _ns_a, ns_b, _if_a, if_b = ns
    cmd = ["ip", "netns", "exec", ns_b, "taskset", "-c", "1", "nice", "-n", str(nice),
           sys.executable, str(Path(__file__).resolve()), "--worker", kind, if_b]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    guard = threading.Timer(RUN_GUARD, proc.kill)
    guard.start()
    try:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"{kind} did not start: {line!r} {proc.stderr.read()[-800:]}")
        for _ in range(20):  # the socket is bound: let a few sync frames through first
            sock.send(traffic.sync)
        time.sleep(0.3)
        cpu0, wait0 = cpu_seconds(proc.pid), waiting_seconds(proc.pid)
        sent, took = traffic.send(sock, rate, seconds)
        time.sleep(0.3)  # let the socket drain what it holds
        cpu1, wait1 = cpu_seconds(proc.pid), waiting_seconds(proc.pid)
        ss_drops = socket_drops(ns_b, proc.pid)
        proc.send_signal(signal.SIGTERM)
        for _ in range(5):
            sock.send(traffic.sync)  # a frame wakes a sniffer blocked in recv
            time.sleep(0.05)
        out, err = proc.communicate(timeout=RUN_GUARD)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
    lines = [x for x in out.splitlines() if x.startswith("{")]
    if not lines:
        raise SystemExit(f"{kind} gave no result: {err[-800:]}")
    result = json.loads(lines[-1])
    pressed = [m for m in result["presses"] if m != button_mac(99)]
    # dashkanban's own PACKET_STATISTICS (ring or receive buffer full); scapy's from `ss`
    drops = result.get("drops", ss_drops)
    received = result["received"]
    return {
        "detector": kind,
        "rate": sent / took,
        "cpu": 100 * (cpu1 - cpu0) / (took + 0.3),
        "us_per_frame": 1e6 * (cpu1 - cpu0) / max(1, received),
        "waited": 100 * (wait1 - wait0) / (took + 0.3),
        "received": received,
        "drops": drops,
        "dropped_pct": None if drops is None else 100 * drops / max(1, received + drops),
        "presses": len(pressed),
        "sent": sent,
    }


def print_ratio(at_rate: dict[str, dict[str, object]]) -> None:
    """The candidate filter after (ring, run()) as a ratio to before (recvmsg, frames())."""
    after = at_rate.get("dashkanban-candidates")
    before = at_rate.get("dashkanban-candidates-before")
    if after is None or before is None:
        return
    ratios = []
    for name, key in (("CPU", "cpu"), ("µs/frame", "us_per_frame")):
        new, old = after[key], before[key]
        assert isinstance(new, float)
        assert isinstance(old, float)
        ratios.append(f"{name} {new / max(1e-9, old):.2f}x")
    print(f"{'':10}  candidate filter, after / before: {', '.join(ratios)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="2000,10000,60000,120000,max")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--nice", type=int, default=0,
                        help="the detectors' nice value (-10: ahead of the machine's other work, "
                        "as on a gateway that runs little else)")
    parser.add_argument("--ring", type=int, help="receive ring bytes of the 'after' detectors "
                        "(default: as the daemon, by the program)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "IFACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    if os.geteuid() != 0:
        sys.exit("flood.py needs root: network namespaces and raw sockets")
    if not 0.5 < args.seconds <= 20:
        sys.exit("--seconds must be between 0.5 and 20")
    rates = [None if r == "max" else float(r) for r in args.rates.split(",")]
    if args.ring is not None:
        os.environ[RING_ENV] = str(args.ring)
    detectors = args.detectors.split(",")
    from tests.e2e.netns import enter

    traffic = Traffic()
    rows: list[dict[str, object]] = []
    with namespaces() as ns:
        os.sched_setaffinity(0, {0})
        holder: list[socket.socket] = []

        def open_sender() -> None:
            enter(ns[0])
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.bind((ns[2], 0))
            holder.append(sock)

        thread = threading.Thread(target=open_sender)
        thread.start()
        thread.join()
        sock = holder[0]  # a socket keeps its namespace: this thread may send on it
        print(f"{'flood /s':>10}  {'detector':28} {'CPU %':>6} {'wait %':>6} {'µs/frame':>8} "
              f"{'received':>9} {'dropped':>16} {'presses':>7}")
        for rate in rates:
            at_rate: dict[str, dict[str, object]] = {}
            for kind in detectors:
                row = run_one(kind, rate, args.seconds, ns, traffic, sock, args.nice)
                rows.append(row)
                at_rate[kind] = row
                drops = ("?" if row["drops"] is None
                         else f"{row['drops']:,} ({row['dropped_pct']:.2f} %)")
                print(f"{row['rate']:10,.0f}  {kind:28} {row['cpu']:6.1f} {row['waited']:6.1f} "
                      f"{row['us_per_frame']:8.2f} {row['received']:9,} {drops:>16} "
                      f"{row['presses']:>4}/{BUTTONS}", flush=True)
            print_ratio(at_rate)
        sock.close()
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "flood.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
