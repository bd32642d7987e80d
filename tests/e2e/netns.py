"""Network namespaces for live tests: two namespaces joined by a veth pair, made and removed by
the fixture; helpers to run work inside one. Traffic never leaves them."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

import pytest

CLONE_NEWNET = 0x40000000
R = TypeVar("R")


@dataclass(frozen=True)
class Pair:
    ns_a: str
    ns_b: str
    if_a: str
    if_b: str
    mac_a: str


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def in_netns(name: str, work: Callable[[], R]) -> R:
    """Run `work` in a thread that has entered namespace `name` (only that thread moves)."""
    result: list[R] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            enter(name)
            result.append(work())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    if failure:
        raise failure[0]
    return result[0]


def enter(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


@pytest.fixture
def veth_pair() -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip is not installed")
    tag = uuid.uuid4().hex[:6]
    pair = Pair(f"dk-a-{tag}", f"dk-b-{tag}", f"dka{tag}", f"dkb{tag}", "02:dd:00:00:00:0a")
    try:
        ip("netns", "add", pair.ns_a)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace: {exc.stderr.decode().strip()}")
    try:
        ip("netns", "add", pair.ns_b)
        ip("link", "add", pair.if_a, "netns", pair.ns_a, "type", "veth", "peer", "name",
            pair.if_b, "netns", pair.ns_b)
        for ns, iface in ((pair.ns_a, pair.if_a), (pair.ns_b, pair.if_b)):
            # No IPv6 on the link: the kernel's own router solicitations would be candidates.
            ip("netns", "exec", ns, "sysctl", "-q", "-w",
                f"net.ipv6.conf.{iface}.disable_ipv6=1")
            ip("-n", ns, "link", "set", iface, "up")
        ip("-n", pair.ns_a, "link", "set", pair.if_a, "address", pair.mac_a)
        yield pair
    finally:
        for ns in (pair.ns_a, pair.ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def sender(pair: Pair, side: Literal["a", "b"] = "a") -> socket.socket:
    """A raw socket on one end of the pair: "a" sends to namespace B's capture; "b" sends from
    B itself (its frames are B's own, PACKET_OUTGOING there)."""
    ns, interface = (pair.ns_a, pair.if_a) if side == "a" else (pair.ns_b, pair.if_b)

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.bind((interface, 0))
        return sock

    return in_netns(ns, make)


