"""Peak memory of `dashkanban run`: the whole daemon process, live capture to the sandbox.

    sudo .venv/bin/python bench/memory.py [--buttons 20,10000] [--presses 5]

For each button count, in network namespaces this script makes and removes (bench/latency.py's):
`dashkanban sandbox` (plain MQTT and REST on namespace B's loopback) and `dashkanban run
--allow-root` capture on the veth end in namespace B, with that many buttons in MACID.csv
(`source = csv`: up to about 4,000 their MACs are in the kernel filter, beyond it the candidate
filter). The daemon settles (connected: the sandbox shows its gateway device), a few buttons are
pressed (ARP frames sent from namespace A) and their events awaited in the sandbox, it settles
again, then its VmHWM (peak resident set, the kernel's high-water mark of this very process) and
VmRSS are read from /proc/PID/status while it runs. `ip netns exec` execs the command, so the
child's PID is the daemon's. Targets of issue 16: about 31 MB with 20 buttons (unchanged), under
40 MB with 10,000.

Needs root (namespaces, raw sockets) and iproute2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import forge
from tests.e2e.netns import Pair, sender

from bench.latency import namespaces

PASSWORD = "bench-memory-pw"  # noqa: S105 - the throw-away sandbox's, in this run's namespace
USER = "t12345/admin"
MQTT_PORT, HTTP_PORT = 1883, 8111  # inside namespace B: nothing else listens there
TARGETS_MB = {20: 31.0, 10_000: 40.0}  # 20: "about 31 MB (unchanged)"; 10,000: "under 40 MB"
WAIT = 60.0  # seconds: the longest any phase may take before the bench gives up


def button_mac(n: int) -> str:
    return f"ac:63:be:{n >> 16:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}"


def write_site(folder: Path, buttons: int, interface: str) -> Path:
    rows = "".join(f"bench_{n}, {button_mac(n)}\n" for n in range(buttons))
    (folder / "MACID.csv").write_text("Name, MAC-Address\n" + rows)
    config = folder / "config.ini"
    config.touch(mode=0o600)
    config.write_text(
        f"[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = {USER}\n"
        f"password = {PASSWORD}\nport = {MQTT_PORT}\ntls = no\n"
        "allow_insecure = yes  ; the sandbox on namespace B's loopback\n"
        f"rest_url = http://127.0.0.1:{HTTP_PORT}\n"
        "[gateway]\nserial = bench-memory-gw\n"
        f"[buttons]\nfile = {folder / 'MACID.csv'}\n"
        f"[capture]\ninterface = {interface}\n"
        f"[outbox]\npath = {folder / 'outbox.sqlite3'}\n"
    )
    return config


def in_b(ns: Pair, *command: str) -> list[str]:
    return ["ip", "netns", "exec", ns.ns_b, *command]


def rest_get(ns: Pair, path: str) -> Any:
    """GET on the sandbox's REST API from inside namespace B (curl: one process, no thread
    juggling); None while it is not up."""
    done = subprocess.run(in_b(ns, "curl", "-sf", "-u", f"{USER}:{PASSWORD}",
                               f"http://127.0.0.1:{HTTP_PORT}{path}"),
                          capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout)


def wait_until(what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what}: the daemon exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {WAIT:.0f} s")
        time.sleep(0.2)


def status(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmHWM", "VmRSS")}


def measure(buttons: int, presses: int, folder: Path) -> dict[str, float]:
    exe = str(Path(sys.executable).parent / "dashkanban")
    with namespaces() as ns:
        config = write_site(folder, buttons, ns.if_b)
        log = (folder / "sandbox.log").open("wb")
        sandbox = subprocess.Popen(
            in_b(ns, exe, "sandbox", "--mqtt-port", str(MQTT_PORT), "--http-port",
                 str(HTTP_PORT), "--password", PASSWORD), stdout=log, stderr=log)
        daemon_log = (folder / "daemon.log").open("wb")
        daemon: subprocess.Popen[bytes] | None = None
        try:
            wait_until("the sandbox", lambda: rest_get(ns, "/inventory/managedObjects") is not None,
                       sandbox)
            daemon = subprocess.Popen(in_b(ns, exe, "run", "-c", str(config), "--allow-root"),
                                      stdout=daemon_log, stderr=daemon_log)

            def devices() -> int:
                found = rest_get(ns, "/inventory/managedObjects?pageSize=2000")
                return len(found["managedObjects"]) if found else 0

            def events() -> int:
                found = rest_get(ns, "/event/events?pageSize=2000")
                return len(found["events"]) if found else 0

            wait_until("the gateway device", lambda: devices() > 0, daemon)
            time.sleep(2.0)  # settled: capture open, start-up sequence sent
            out = sender(ns)
            try:
                step = max(1, buttons // presses)
                for n in range(0, step * presses, step):
                    out.send(forge.arp_frame(1, button_mac(n), "0.0.0.0", "10.0.0.9"))
                    time.sleep(0.1)
            finally:
                out.close()
            wait_until(f"{presses} events", lambda: events() >= presses, daemon)
            time.sleep(2.0)
            return status(daemon.pid)
        finally:
            for process in (daemon, sandbox):
                if process is not None:
                    process.terminate()
                    try:
                        process.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
            log.close()
            daemon_log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buttons", default="20,10000",
                        help="button counts, comma-separated (default 20,10000)")
    parser.add_argument("--presses", type=int, default=5, help="presses per run (default 5)")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("curl") is None:
        sys.exit("bench/memory.py needs root (network namespaces, raw sockets), iproute2, curl")
    bare = subprocess.run([sys.executable, "-c", "print(open('/proc/self/status').read())"],
                          capture_output=True, text=True, check=True).stdout
    bare_mb = int(bare.split("VmHWM:")[1].split()[0]) / 1024
    print(f"dashkanban run, live capture to the sandbox, {args.presses} presses "
          f"(a bare python: {bare_mb:.1f} MB)")
    missed = False
    for buttons in (int(b) for b in args.buttons.split(",")):
        folder = Path(tempfile.mkdtemp(prefix="bench-memory-"))
        try:
            got = measure(buttons, args.presses, folder)
        except RuntimeError as exc:
            print(f"  {buttons:>6,} buttons: FAILED: {exc}; logs in {folder}")
            missed = True
            continue
        shutil.rmtree(folder, ignore_errors=True)
        target = TARGETS_MB.get(buttons)
        verdict = ""
        if target is not None:
            met = got["VmHWM"] < target or (buttons == 20 and got["VmHWM"] < target * 1.1)
            missed |= not met
            verdict = (f"; target {'about' if buttons == 20 else 'under'} {target:.0f} MB: "
                       f"{'met' if met else 'MISSED'}")
        print(f"  {buttons:>6,} buttons: VmHWM {got['VmHWM']:.1f} MB, VmRSS {got['VmRSS']:.1f} MB"
              f"{verdict}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
