"""Real faults for the end-to-end tests: a connection-cutting TCP proxy, a tiny file system, a
read-only mount, and a child process that writes to an outbox until it is killed.

Nothing here talks to any address but 127.0.0.1. Mounting needs root; the helpers skip the test
with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.brokers import Mosquitto

REPO = Path(__file__).resolve().parent.parent
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


def reset(sock: socket.socket) -> None:
    """Close a TCP socket with a reset, as a dropped route or a rebooted router does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


@dataclass
class _Command:
    name: str
    done: threading.Event = field(default_factory=threading.Event)
    result: int = 0


class ResetProxy:
    """A TCP proxy on 127.0.0.1 that forwards to a broker and can cut every connection.

    `cut()` resets every open connection on both sides (the client sees ECONNRESET, the broker a
    dropped client) and returns how many it cut. `refuse(True)` models the network being down:
    new connections are accepted and reset at once, until `refuse(False)`. `hold(True)` keeps
    everything the broker sends (PUBACKs) from reaching the client, which still gets through:
    the broker has the message, the client never hears so; `hold(False)` delivers what was held,
    a `cut()` or the client's death drops it (a lost PUBACK). One thread runs a select loop;
    commands reach it through a socket pair, so `cut()` returns only when done.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._commands: list[_Command] = []
        self._lock = threading.Lock()
        self._refusing = False
        self._thread: threading.Thread | None = None
        self.accepted = 0  # connections forwarded to the target
        self.refused = 0  # connections reset at once while refusing

    def __enter__(self) -> ResetProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reset-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._send("stop")
        self._thread.join(timeout=5)
        self._thread = None
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def cut(self) -> int:
        """Reset every open connection now; returns how many client connections were cut."""
        return self._send("cut")

    def refuse(self, on: bool) -> None:
        self._refusing = on

    def hold(self, on: bool) -> int:
        """Hold (True) or release (False) the broker-to-client direction; returns the bytes
        held at the moment of the call (released ones are sent on)."""
        return self._send("hold" if on else "release")

    @property
    def open_connections(self) -> int:
        return self._send("count")

    def _send(self, name: str) -> int:
        command = _Command(name)
        with self._lock:
            self._commands.append(command)
        self._wake_w.send(b"x")
        if not command.done.wait(timeout=5):
            raise TimeoutError(f"the proxy did not answer {name!r}")
        return command.result

    def _loop(self) -> None:
        clients: set[socket.socket] = set()
        held: dict[socket.socket, bytearray] = {}  # client -> bytes the broker sent it, held
        holding = False
        running = True
        while running:
            watched = [self._listener, self._wake_r, *self._peers]
            readable, _, _ = select.select(watched, [], [], 1.0)
            for sock in readable:
                if sock is self._wake_r:
                    self._wake_r.recv(4096)
                    with self._lock:
                        commands, self._commands = self._commands, []
                    for command in commands:
                        if command.name in ("cut", "stop"):
                            command.result = len(clients)
                            for peer in list(self._peers):
                                reset(peer)
                            self._peers.clear()
                            clients.clear()
                            held.clear()
                            running = running and command.name != "stop"
                        elif command.name == "count":
                            command.result = len(clients)
                        elif command.name == "hold":
                            holding = True
                            command.result = sum(len(b) for b in held.values())
                        elif command.name == "release":
                            holding = False
                            command.result = sum(len(b) for b in held.values())
                            for client_sock, data in held.items():
                                with contextlib.suppress(OSError):
                                    client_sock.sendall(data)
                            held.clear()
                        command.done.set()
                elif sock is self._listener:
                    client, _ = self._listener.accept()
                    if self._refusing:
                        self.refused += 1
                        reset(client)
                        continue
                    try:
                        upstream = socket.create_connection(self.target, timeout=2)
                    except OSError:
                        reset(client)
                        continue
                    for s in (client, upstream):
                        s.settimeout(5)
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._peers[client] = upstream
                    self._peers[upstream] = client
                    clients.add(client)
                    self.accepted += 1
                elif sock in self._peers:
                    peer = self._peers[sock]
                    try:
                        data = sock.recv(65536)
                        if data and holding and peer in clients:
                            held.setdefault(peer, bytearray()).extend(data)
                            continue
                        if data:
                            peer.sendall(data)
                            continue
                    except OSError:
                        pass
                    # One side closed or failed: close the pair as a router would, with a reset.
                    for s in (sock, peer):
                        self._peers.pop(s, None)
                        clients.discard(s)
                        held.pop(s, None)
                        reset(s)


# -- the broker ------------------------------------------------------------------------------


def restart(broker: Mosquitto, down_for: float = 0.0) -> None:
    """Stop the broker (SIGTERM, as systemd does), stay down `down_for` s, start it on the same
    port. Clients see their connection close; mosquitto runs with `persistence false`, so like a
    clean-session Cumulocity it remembers nothing of them."""
    broker.stop()
    if down_for:
        time.sleep(down_for)
    broker.start()


def revoke_password(broker: Mosquitto, user: str) -> None:
    """Change `user`'s password to a random one and make mosquitto reload (SIGHUP): new logins
    with the old password get CONNACK "not authorised". Open connections are not closed by the
    reload; cut them with a ResetProxy to force the client to log in again."""
    set_password(broker, user, os.urandom(12).hex())


def restore_password(broker: Mosquitto, user: str) -> None:
    """Give `user` back the password the broker was started with."""
    assert broker.users
    set_password(broker, user, broker.users[user])


def set_password(broker: Mosquitto, user: str, password: str) -> None:
    assert broker.process is not None
    assert broker.users
    reloads = broker.log_text().count("Reloading config.")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(broker.folder / "passwd"), user, password],
        check=True,
        capture_output=True,
    )
    broker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while broker.log_text().count("Reloading config.") == reloads:
        if time.monotonic() > deadline:
            raise TimeoutError("mosquitto did not reload its password file")
        time.sleep(0.01)


# -- file systems ------------------------------------------------------------------------------


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (mount); run the tests as root to include it")


def _mount(args: list[str]) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} failed here: {result.stderr.strip()}")


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "256k") mounted on `folder`: a disk that fills up for real."""
    _need_root("a tiny file system")
    folder.mkdir(parents=True, exist_ok=True)
    _mount(["-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)])
    try:
        yield folder
    finally:
        _umount(folder)


@contextlib.contextmanager
def read_only_filesystem(folder: Path, populate: Callable[[Path], None]) -> Iterator[Path]:
    """A tmpfs filled by `populate`, then remounted read-only (EROFS even for root)."""
    _need_root("a read-only file system")
    folder.mkdir(parents=True, exist_ok=True)
    _mount(["-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(folder)])
    try:
        populate(folder)
        _mount(["-o", "remount,ro", str(folder)])
        yield folder
    finally:
        _umount(folder)


# -- a child that writes until killed ----------------------------------------------------------


def start_writer(db: Path, start: int, count: int) -> subprocess.Popen[str]:
    """`python -m tests.outbox_writer DB START COUNT`: puts events START.., printing each id after
    its put returned (stdout flushed per line)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.outbox_writer", str(db), str(start), str(count)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
