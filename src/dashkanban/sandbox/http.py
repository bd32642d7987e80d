"""A small HTTP/1.1 server on asyncio streams: enough for the sandbox's REST API and page.

Requests are parsed into a typed `Request`; a handler returns a `Response`. Keep-alive, a
Content-Length body (no chunked uploads), bounded header and body sizes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from dashkanban.sandbox.connections import Connections

log = logging.getLogger(__name__)

# The request line and headers together. Cumulocity does not document its limit; over it the
# sandbox answers 431 Request Header Fields Too Large (RFC 6585 section 5), docs/sandbox.md.
MAX_HEADER_BYTES = 32 * 1024
MAX_BODY_BYTES = 4 * 1024 * 1024
IDLE_TIMEOUT = 60.0

_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
    411: "Length Required", 413: "Payload Too Large", 415: "Unsupported Media Type",
    422: "Unprocessable Entity", 431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def encode(self, keep_alive: bool) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}"]
        if self.content_type:
            lines.append(f"Content-Type: {self.content_type}")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.extend(f"{k}: {v}" for k, v in self.headers)
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]


class BadRequestError(Exception):
    status = 400


class HeaderTooLargeError(BadRequestError):
    status = 431


_TOO_LARGE = f"request line and headers over {MAX_HEADER_BYTES} bytes"


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequestError("incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise HeaderTooLargeError(_TOO_LARGE) from None
    if len(head) > MAX_HEADER_BYTES:
        raise HeaderTooLargeError(_TOO_LARGE)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequestError("bad request line")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequestError("bad header line")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequestError("chunked bodies are not supported")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit() or int(length_text) > MAX_BODY_BYTES:
        raise BadRequestError("bad Content-Length")
    body = await reader.readexactly(int(length_text)) if int(length_text) else b""
    split = urlsplit(target)
    # parse_qsl turns a raw `+` into a space, as the platform does: `+` in a time must be
    # sent as %2B (openapi, docs/protocol.md 3.1).
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    return Request(method.upper(), unquote(split.path), query, headers, body)


class HttpServer:
    """Serves `handler` on connections handed over by `asyncio.start_server`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._connections = Connections()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._connections.serving(writer):
            await self._handle(reader, writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        request = await _read_request(reader)
                except BadRequestError as exc:
                    refusal = Response(exc.status, str(exc).encode(), "text/plain")
                    writer.write(refusal.encode(False))
                    await writer.drain()
                    return
                if request is None:
                    return
                keep_alive = request.header("connection") != "close"
                try:
                    response = await self.handler(request)
                except Exception:  # a handler bug must not kill the server; the client gets 500
                    log.exception("HTTP handler failed for %s %s", request.method, request.path)
                    response = Response(500, b"internal error", "text/plain")
                if request.method == "HEAD":
                    response = Response(response.status, b"", response.content_type,
                                        response.headers)
                writer.write(response.encode(keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # only `close()` cancels; see Broker.handle

    async def close(self) -> None:
        await self._connections.close_all()
