"""A real local HTTP server answering the few Cumulocity REST calls the Kanban code makes, with
Cumulocity's JSON shapes (docs/protocol.md 3.2 to 3.5). In-memory, 127.0.0.1 only, one per test."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Store:
    username: str
    password: str
    identities: dict[str, str] = field(default_factory=dict)  # c8y_Serial -> id
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, list[str]]]] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)  # statuses to answer before serving
    base: str = ""
    # While set and not released, every request waits (a slow tenant); tests release it.
    hold: threading.Event | None = None
    in_flight: int = 0  # requests being served now (one thread each)
    peak: int = 0  # the most served at once
    counting: threading.Lock = field(default_factory=threading.Lock)

    def add_device(self, mo_id: str, serial: str, **fragments: Any) -> None:
        self.identities[serial] = mo_id
        self.objects[mo_id] = {"id": mo_id, "name": serial, **fragments}

    def add_event(self, source: str, time: str, event_type: str = "c8y_MAC_Event") -> None:
        self.events.append(
            {
                "id": str(len(self.events) + 1000),
                "source": {"id": source, "self": f"{self.base}/inventory/managedObjects/{source}"},
                "type": event_type,
                "text": "pressed",
                "time": time,
            }
        )


    def add_alarm(self, source: str, first: str, status: str = "ACTIVE",
                  last_updated: str | None = None, count: int = 1,
                  alarm_type: str = "c8y_KanbanReorder") -> None:
        self.alarms.append(
            {
                "id": str(len(self.alarms) + 5000),
                "source": {"id": source, "self": f"{self.base}/inventory/managedObjects/{source}"},
                "type": alarm_type, "text": "Reorder", "severity": "MAJOR", "status": status,
                "count": count, "time": first, "firstOccurrenceTime": first,
                "creationTime": first, "lastUpdated": last_updated or first,
            }
        )


def _error(status: int, error: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {
        "error": error,
        "message": message,
        "info": "https://www.cumulocity.com/guides/reference/#error_reporting",
    }


class _Handler(BaseHTTPRequestHandler):
    store: Store

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        expected = base64.b64encode(
            f"{self.store.username}:{self.store.password}".encode()
        ).decode()
        return header == f"Basic {expected}"

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        store = self.store
        with store.counting:
            store.in_flight += 1
            store.peak = max(store.peak, store.in_flight)
        try:
            self._serve(method)
        finally:
            with store.counting:
                store.in_flight -= 1

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.store.requests.append((method, url.path, query))
        if self.store.hold is not None:
            self.store.hold.wait(30)  # bounded: a test that forgets to release still ends
        body = None
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = json.loads(self.rfile.read(length))
            self.store.bodies.append(body)
        if not self._authorized():
            self._send(*_error(401, "security/Unauthorized",
                               "Full authentication is required to access this resource"))
            return
        if self.store.fail_next:
            status = self.store.fail_next.pop(0)
            self._send(*_error(status, "general/tooManyRequests",
                               "Requests rate exceeds the limit"))
            return
        self._send(*self._route(method, url.path, query, body))

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        store = self.store
        if method == "GET" and parts[:3] == ["identity", "externalIds", "c8y_Serial"]:
            serial = parts[3]
            if serial not in store.identities:
                return _error(404, "identity/Not Found",
                              f"External id not found; external id = ID [type=c8y_Serial, "
                              f"value={serial}]")
            mo_id = store.identities[serial]
            return 200, {
                "externalId": serial,
                "type": "c8y_Serial",
                "managedObject": {"id": mo_id,
                                  "self": f"{store.base}/inventory/managedObjects/{mo_id}"},
            }
        if parts[:2] == ["inventory", "managedObjects"] and len(parts) == 3:
            mo = store.objects.get(parts[2])
            if mo is None:
                return _error(404, "inventory/Not Found",
                              f"Finding device data from database failed : No managedObject for "
                              f"id '{parts[2]}'!")
            if method == "PUT":
                mo.update(body)
            return 200, mo
        if method == "GET" and parts in (["event", "events"], ["alarm", "alarms"]):
            key = parts[1]
            every = store.events if key == "events" else store.alarms
            events = [e for e in every if e["type"] == query.get("type", [""])[0]]
            if "dateFrom" in query:
                start = datetime.fromisoformat(query["dateFrom"][0].replace("Z", "+00:00"))
                events = [
                    e for e in events
                    if datetime.fromisoformat(e["time"].replace("Z", "+00:00")) >= start
                ]
            events.sort(key=lambda e: e["time"], reverse=True)  # newest first, as Cumulocity
            size = min(int(query.get("pageSize", ["5"])[0]), 2000)
            page = int(query.get("currentPage", ["1"])[0])
            chunk = events[(page - 1) * size : page * size]
            return 200, {
                "self": f"{store.base}/{path.strip('/')}?pageSize={size}&currentPage={page}",
                key: chunk,
                "statistics": {"currentPage": page, "pageSize": size},
            }
        return _error(404, "general/Not Found", f"no route for {method} {path}")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")


@contextmanager
def c8y_server(store: Store) -> Iterator[str]:
    """Serve `store` on 127.0.0.1 (a free port); yields the base URL."""
    handler = type("Handler", (_Handler,), {"store": store})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    store.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield store.base
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
