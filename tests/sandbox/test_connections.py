"""The sandbox stops with clients still connected, quietly: each open connection is ended and
no ERROR is logged (`dashkanban demo` stops it so, with the page's or a REST client's
keep-alive connection often still open)."""

from __future__ import annotations

import logging
import socket

import pytest

from dashkanban.sandbox import Sandbox
from tests.sandbox_fixture import SANDBOX_PASSWORD, SANDBOX_USER, sandbox_options


def _mqtt_connected(port: int) -> socket.socket:
    """A raw MQTT 3.1.1 client, CONNACKed: the broker's handler now waits for its next packet."""
    user, password, cid = SANDBOX_USER.encode(), SANDBOX_PASSWORD.encode(), b"left-open"
    body = (b"\x00\x04MQTT\x04\xc2\x00\x3c" + len(cid).to_bytes(2, "big") + cid
            + len(user).to_bytes(2, "big") + user + len(password).to_bytes(2, "big") + password)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


def _http_kept_alive(port: int) -> socket.socket:
    """A raw HTTP/1.1 client that got one answer: the handler now waits for its next request."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /inventory/managedObjects HTTP/1.1\r\nHost: sandbox\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 401 "), head
    return sock


def _ended(sock: socket.socket) -> bool:
    """Whether the peer closed: EOF after whatever it still sent."""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return True
        if not chunk:
            return True


def test_stopping_with_clients_connected_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    sandbox = Sandbox(sandbox_options()).start()
    try:
        assert sandbox.mqtt_port is not None
        assert sandbox.http_port is not None
        mqtt = _mqtt_connected(sandbox.mqtt_port)
        http = _http_kept_alive(sandbox.http_port)
    finally:
        sandbox.stop()
    with mqtt, http:
        assert _ended(mqtt)
        assert _ended(http)
    # Python 3.11's start_server calls task.exception() on a handler task that ended cancelled,
    # which raises in its callback: "Exception in callback ... CancelledError" at ERROR.
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_connection_closing_as_the_listener_stops_ends_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The race behind `make demo`'s last line: a handler already in its closing wait (its
    peer does not read what is still buffered) when `close_all` cancels it. Its task must end
    normally, the connection aborted, and nothing logged at ERROR."""
    import asyncio

    from dashkanban.sandbox.connections import Connections

    caplog.set_level(logging.DEBUG, logger="asyncio")

    async def read_to_the_end(reader: asyncio.StreamReader) -> bool:
        """Whether the connection ended (EOF or reset) within the hang guard."""
        try:
            async with asyncio.timeout(10):
                while await reader.read(1 << 20):
                    pass
        except ConnectionResetError:
            pass
        return True

    async def main() -> bool:
        connections = Connections()
        in_closing_wait = asyncio.Event()

        async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async with connections.serving(writer):
                writer.write(b"x" * (64 << 20))  # far more than the socket buffers take
                in_closing_wait.set()
            # serving's exit, with no await before it: the writer closed, then the wait for the
            # transport to flush, which the peer never lets happen

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.pause_reading()  # the peer reads nothing
        await asyncio.wait_for(in_closing_wait.wait(), 10)
        server.close()
        await asyncio.wait_for(connections.close_all(), 10)
        await server.wait_closed()
        writer.transport.resume_reading()
        ended = await read_to_the_end(reader)  # aborted: not left to flush 64 MiB
        writer.close()
        for _ in range(3):  # the start_server callback runs on a later turn
            await asyncio.sleep(0)
        return ended

    assert asyncio.run(main())
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_stop_is_not_held_up_by_a_peer_that_does_not_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that takes the stop's cancel itself, as the broker's and the HTTP server's
    do, then closes while its peer reads nothing: close_all() still ends (the connection is
    aborted after CLOSING_WAIT)."""
    import asyncio

    from dashkanban.sandbox.connections import Connections

    caplog.set_level(logging.DEBUG, logger="asyncio")

    async def main() -> list[str]:
        connections = Connections()
        writing = asyncio.Event()
        ended: list[str] = []

        async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async with connections.serving(writer):
                try:
                    writer.write(b"x" * (64 << 20))
                    writing.set()
                    await writer.drain()  # never done: the peer reads nothing
                except asyncio.CancelledError:
                    ended.append("cancelled in the handler")  # the stop, taken here

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.pause_reading()
        await asyncio.wait_for(writing.wait(), 10)
        server.close()
        await asyncio.wait_for(connections.close_all(), 10)  # the hang guard; 1 s when right
        await server.wait_closed()
        writer.transport.resume_reading()
        try:
            async with asyncio.timeout(10):
                while await reader.read(1 << 20):
                    pass
            ended.append("the peer saw the end")
        except ConnectionResetError:
            ended.append("the peer saw the end")
        writer.close()
        for _ in range(3):
            await asyncio.sleep(0)
        return ended

    assert asyncio.run(main()) == ["cancelled in the handler", "the peer saw the end"]
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR] == []
