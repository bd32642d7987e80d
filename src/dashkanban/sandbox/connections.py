"""The live connections of one listener (MQTT or HTTP): what `stop()` must end."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

CLOSING_WAIT = 1.0  # seconds a stopping listener lets a peer read the rest before aborting


class Connections:
    """Tracks each connection's task, sets TCP_NODELAY, and closes the writer at the end."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @contextlib.asynccontextmanager
    async def serving(self, writer: asyncio.StreamWriter) -> AsyncIterator[None]:
        """Around a connection handler: registered while it runs, closed after."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # paho does not set TCP_NODELAY; without it on both ends each QoS 1 publish waited
            # 44 ms for Nagle (measured with paho 2.2 against a broker that did not set it).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            yield
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            writer.close()
            try:
                await self._closed(writer)
            except asyncio.CancelledError:
                if not self._closing:
                    raise
                writer.transport.abort()
            except Exception:  # noqa: BLE001, S110 - the connection is over either way
                pass
            finally:
                if task is not None:
                    self._tasks.discard(task)
        # A task that close_all() cancelled ends normally, not cancelled: Python 3.11's
        # start_server calls task.exception() on the handler's task, which raises for a
        # cancelled one, and asyncio logs "Exception in callback ... CancelledError" at ERROR
        # (asyncio/streams.py, StreamReaderProtocol.connection_made; `make demo` printed it
        # whenever a client's connection was closing as the sandbox stopped).

    async def _closed(self, writer: asyncio.StreamWriter) -> None:
        """Until the transport has sent what it holds and closed; while stopping, a moment at
        most: a peer that does not read does not hold up a stop (aborted)."""
        if not self._closing:
            await writer.wait_closed()
            return
        try:
            async with asyncio.timeout(CLOSING_WAIT):
                await writer.wait_closed()
        except TimeoutError:
            writer.transport.abort()

    async def close_all(self) -> None:
        self._closing = True
        try:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            self._closing = False  # a sandbox started again serves as before
