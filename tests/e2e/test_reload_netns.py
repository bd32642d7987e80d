"""SIGHUP for real (issue 16, item 2): a `dashkanban run` process in namespace B of a veth pair,
capturing with the button list in its kernel filter and connected to the sandbox (which runs in
B too), gets a button appended to MACID.csv and a SIGHUP: that button's press, dropped by the
kernel before, is then captured and delivered, over the same connection. A bad file then keeps
the list with one ERROR line."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dashkanban.sandbox import Sandbox
from tests import forge
from tests.e2e.netns import Pair, in_netns, ip, sender
from tests.faults import REPO
from tests.sandbox_fixture import sandbox_config, sandbox_options

pytestmark = pytest.mark.netns

SYNC, MARKER = "ac:63:be:00:00:01", "ac:63:be:00:00:02"  # in MACID.csv from the start
NEW, NEWER = "ac:63:be:12:34:56", "fc:a6:67:0a:0b:0c"  # appended while it runs
GATEWAY = "dashkanban-gw-01"
WAIT = 20.0


@pytest.fixture
def sandbox_in_b(veth_pair: Pair) -> Iterator[Sandbox]:
    """The sandbox with its sockets in namespace B (its threads are started from a thread that
    entered B, and inherit it), so that the daemon there reaches it on B's loopback."""
    ip("-n", veth_pair.ns_b, "link", "set", "lo", "up")
    running = in_netns(veth_pair.ns_b, lambda: Sandbox(sandbox_options()).start())
    yield running
    running.stop()


def wait_until(check: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; the daemon's log:\n"
                                 f"{log.read_text()}")
        time.sleep(0.05)


def events(sandbox: Sandbox) -> list[str]:
    """`<name> pressed (<mac>)` of every event the gateway sent, in order."""
    found = []
    for m in sandbox.messages():
        if m.direction == "in" and m.client_id == GATEWAY and m.payload.startswith("400,"):
            match = re.match(r"400,c8y_MAC_Event,(.*),\d{4}-", m.payload)
            assert match is not None, m.payload
            found.append(match[1])
    return found


def pressed(name: str, mac: str) -> str:
    return f"{name} pressed ({mac})"


def test_sighup_adds_a_button_to_the_running_daemon_and_a_bad_file_keeps_the_list(
    tmp_path: Path, veth_pair: Pair, sandbox_in_b: Sandbox
) -> None:
    sandbox = sandbox_in_b
    buttons = tmp_path / "MACID.csv"
    first = f"Name, MAC-Address\nsync, {SYNC}\nmarker, {MARKER}\n"
    buttons.write_text(first)
    config = sandbox_config(tmp_path, sandbox, buttons, gateway=GATEWAY,
                            extra="[capture]\ndetect = arp, dhcp\n")
    log = tmp_path / "run.log"
    out = sender(veth_pair)
    with log.open("wb") as err:
        run = subprocess.Popen(
            ["ip", "netns", "exec", veth_pair.ns_b, sys.executable, "-m", "dashkanban",
             "run", "-c", str(config), "-i", veth_pair.if_b, "--allow-root"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )

    def press(mac: str) -> None:
        out.send(forge.dhcp_client_frame(mac, forge.DISCOVER))

    try:
        wait_until(lambda: f"{GATEWAY} ready" in log.read_text(), "the connection", log)
        # The socket is open once a press of a listed button arrives (bounded: within its dead
        # time, 30 s by default, these are all one press).
        for _ in range(100):
            press(SYNC)
            if events(sandbox):
                break
            time.sleep(0.1)
        assert events(sandbox) == [pressed("sync", SYNC)]

        # Not listed yet: the kernel drops it; the marker behind it shows it had its chance.
        press(NEW)
        press(MARKER)
        wait_until(lambda: len(events(sandbox)) == 2, "the marker", log)
        assert events(sandbox) == [pressed("sync", SYNC), pressed("marker", MARKER)]

        buttons.write_text(first + f"new, {NEW}\nnewer, {NEWER}\n")
        run.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload: 4 buttons" in log.read_text(), "the reload", log)
        press(NEW)
        wait_until(lambda: len(events(sandbox)) == 3, "the new button's press", log)
        assert events(sandbox)[2] == pressed("new", NEW)

        # A bad file: one ERROR, and the four buttons stay (NEWER was never pressed before).
        buttons.write_text("Name, MAC-Address\nbroken, not-a-mac\n")
        run.send_signal(signal.SIGHUP)
        wait_until(lambda: "keeping the buttons loaded before" in log.read_text(),
                   "the refused reload", log)
        press(NEWER)
        wait_until(lambda: len(events(sandbox)) == 4, "the press after the bad file", log)
        assert events(sandbox)[3] == pressed("newer", NEWER)
        assert run.poll() is None  # SIGHUP no longer stops it

        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 0
    finally:
        out.close()
        if run.poll() is None:
            run.kill()
            run.wait()
    text = log.read_text()
    # The uplink was never dropped: one connection, one start-up sequence.
    hellos = [m for m in sandbox.messages()
              if m.direction == "in" and m.client_id == GATEWAY and m.payload.startswith("100,")]
    assert len(hellos) == 1
    assert text.count(f"{GATEWAY} ready") == 1
    # "date time LEVEL logger: message" -> "LEVEL logger: message"
    lines = [" ".join(line.split()[2:]) for line in text.splitlines()]
    reload_lines = [line for line in lines if "reload" in line.lower()]
    assert reload_lines[0] == f"INFO dashkanban.commands.run: SIGHUP: reloading {buttons}"
    assert reload_lines[1] == (f"INFO dashkanban.capture.filters: reload: 4 buttons from "
                               f"{buttons}; the button filter (4 MACs)")
    assert reload_lines[2] == f"INFO dashkanban.commands.run: SIGHUP: reloading {buttons}"
    assert re.fullmatch(
        re.escape(f"ERROR dashkanban.capture.filters: reload: {buttons}:2: ") + ".+"
        + re.escape("; keeping the buttons loaded before"), reload_lines[3]), reload_lines[3]
    assert len(reload_lines) == 4
    assert [line for line in lines if line.startswith(("ERROR", "CRITICAL"))] == [
        reload_lines[3]]
    assert lines[-1] == "INFO dashkanban.commands.run: dashkanban stopped"
