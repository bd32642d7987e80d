"""The inventory source against a real local HTTP(S) server with Cumulocity's exact bodies."""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dashkanban.c8y.rest import (
    CumulocityRest,
    InventoryError,
    RestInventoryLookup,
    RestRefusedError,
)
from dashkanban.config import Settings, load_settings
from dashkanban.detect.buttons import Button
from tests.brokers import TlsFiles

PASSWORD = "s3cret"
AUTH = "Basic " + base64.b64encode(b"t12345/dash-gateway:s3cret").decode()
KNOWN = "ac63be123456"
FOUND = {
    "externalId": KNOWN,
    "managedObject": {"id": "2480300",
                      "self": "https://t12345.example/inventory/managedObjects/2480300"},
    "self": f"https://t12345.example/identity/externalIds/c8y_Serial/{KNOWN}",
    "type": "c8y_Serial",
}
MANAGED = {"id": "2480300", "name": "Aisle 2 screws", "type": "c8y_DashButton",
           "self": "https://t12345.example/inventory/managedObjects/2480300"}
UNAUTHORIZED = {"error": "security/Unauthorized",
                "message": "Full authentication is required to access this resource",
                "info": "https://www.cumulocity.com/guides/reference-guide/#error_reporting"}


def not_found(serial: str) -> dict[str, str]:
    return {
        "error": "identity/Not Found",
        "info": "https://www.cumulocity.com/guides/reference/#error_reporting",
        "message": f"External id not found; external id = ID [type=c8y_Serial, value={serial}]",
    }


class FakeTenant:
    """What the server answers; `failures` makes the next N identity requests fail with 503."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.failures = 0


def make_handler(tenant: FakeTenant) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: object, kind: str) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type",
                             f"application/vnd.com.nsn.cumulocity.{kind}+json;charset=UTF-8;ver=0.9")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            tenant.requests.append((self.path, self.headers.get("X-Cumulocity-Application-Key")))
            if self.headers.get("Authorization") != AUTH:
                self._send(401, UNAUTHORIZED, "error")
                return
            prefix = "/identity/externalIds/c8y_Serial/"
            if self.path.startswith(prefix):
                if tenant.failures > 0:
                    tenant.failures -= 1
                    self._send(503, {"error": "general/ServiceUnavailable", "message": "busy"},
                               "error")
                    return
                serial = self.path[len(prefix):]
                if serial == KNOWN:
                    self._send(200, FOUND, "externalid")
                else:
                    self._send(404, not_found(serial), "error")
                return
            if self.path == "/inventory/managedObjects/2480300":
                self._send(200, MANAGED, "managedobject")
                return
            self._send(404, {"error": "undefined/Not Found", "message": "no such path"}, "error")

    return Handler


@pytest.fixture
def tenant() -> FakeTenant:
    return FakeTenant()


def serve(tenant: FakeTenant, tls: TlsFiles | None = None) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(tenant))
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.server_cert, tls.server_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def http_server(tenant: FakeTenant) -> Iterator[str]:
    server, url = serve(tenant)
    yield url
    server.shutdown()
    server.server_close()


def settings(folder: Path, rest_url: str, password: str = PASSWORD, ttl: str = "300",
             ca_file: Path | None = None) -> Settings:
    path = folder / "config.ini"
    path.write_text(
        "[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = dash-gateway\n"
        f"password = {password}\nport = 8883\nrest_url = {rest_url}\n"
        + (f"ca_file = {ca_file}\n" if ca_file else "")
        + f"[buttons]\nsource = inventory\ncache_ttl = {ttl}\n"
    )
    path.chmod(0o600)
    return load_settings(path)


def make_source(config: Settings, clock: Clock) -> RestInventoryLookup:
    """The source with the shared client, its backoff recorded instead of slept (the jitter at
    its top: each wait is the ceiling)."""
    return RestInventoryLookup(config, rest=CumulocityRest.from_settings(
        config.c8y, sleep=clock.sleep, jitter=lambda: 1.0), clock=clock)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_known_serial_is_a_button_named_from_the_inventory(
    tmp_path: Path, tenant: FakeTenant, http_server: str
) -> None:
    clock = Clock()
    source = make_source(settings(tmp_path, http_server), clock)
    try:
        assert source("ac:63:be:12:34:56") == Button(name="Aisle 2 screws",
                                                     mac="ac:63:be:12:34:56")
        assert source("fc:a6:67:0a:0b:0c") is None
        assert tenant.requests == [
            ("/identity/externalIds/c8y_Serial/ac63be123456", None),
            ("/inventory/managedObjects/2480300", None),
            ("/identity/externalIds/c8y_Serial/fca6670a0b0c", None),
        ]
    finally:
        source.close()


def test_cache_positive_and_negative_for_the_ttl(tmp_path: Path, tenant: FakeTenant,
                                                 http_server: str) -> None:
    clock = Clock()
    source = make_source(settings(tmp_path, http_server, ttl="60"), clock)
    try:
        for _ in range(50):  # a busy button: one look-up per TTL
            assert source("ac:63:be:12:34:56") is not None
            assert source("fc:a6:67:0a:0b:0c") is None
        assert len(tenant.requests) == 3
        clock.now += 59.9
        source("ac:63:be:12:34:56")
        source("fc:a6:67:0a:0b:0c")
        assert len(tenant.requests) == 3
        clock.now += 0.2
        source("ac:63:be:12:34:56")
        source("fc:a6:67:0a:0b:0c")
        assert len(tenant.requests) == 6
    finally:
        source.close()


def test_server_errors_are_retried_with_backoff_never_unknown(
    tmp_path: Path, tenant: FakeTenant, http_server: str
) -> None:
    clock = Clock()
    source = make_source(settings(tmp_path, http_server), clock)
    try:
        tenant.failures = 2
        assert source("ac:63:be:12:34:56") == Button(name="Aisle 2 screws",
                                                     mac="ac:63:be:12:34:56")
        assert clock.slept == [0.5, 1.0]
        tenant.failures = 3
        with pytest.raises(InventoryError) as info:
            source("fc:a6:67:0a:0b:0c")
        assert str(info.value) == (
            "identity look-up of fca6670a0b0c: 503 general/ServiceUnavailable: busy "
            "(GET /identity/externalIds/c8y_Serial/fca6670a0b0c, 3 attempts)"
        )
        assert clock.slept == [0.5, 1.0, 0.5, 1.0]
        # A failure is not cached as anything: the next call asks again (when to ask is the
        # caller's business: inventory.LookupQueue backs off), and 404 is then "not a button".
        assert source.cached("fc:a6:67:0a:0b:0c") is not None
        assert source("fc:a6:67:0a:0b:0c") is None
        assert source.cached("fc:a6:67:0a:0b:0c") is None
    finally:
        source.close()


def test_unreachable_server_is_an_error_not_unknown(tmp_path: Path) -> None:
    clock = Clock()
    source = make_source(settings(tmp_path, "http://127.0.0.1:9"), clock)
    try:
        with pytest.raises(InventoryError) as info:
            source("ac:63:be:12:34:56")
        message = str(info.value)
        assert message.startswith(
            "identity look-up of ac63be123456: cannot reach Cumulocity: ConnectError: "
        )
        assert message.endswith(
            " (GET /identity/externalIds/c8y_Serial/ac63be123456, 3 attempts)"
        )
        assert clock.slept == [0.5, 1.0]
    finally:
        source.close()


def test_wrong_password_is_a_clear_error(tmp_path: Path, tenant: FakeTenant,
                                         http_server: str) -> None:
    source = RestInventoryLookup(settings(tmp_path, http_server, password="wrong"))
    try:
        with pytest.raises(RestRefusedError) as info:
            source("ac:63:be:12:34:56")
        assert str(info.value) == (
            "Cumulocity refused the login of t12345/dash-gateway (401): check tenantID, user and "
            "password"
        )
        assert "wrong" not in str(info.value)
        assert len(tenant.requests) == 1  # not retried
    finally:
        source.close()


def test_https_with_the_configured_ca(tmp_path: Path, tenant: FakeTenant,
                                      tls_files: TlsFiles) -> None:
    server, url = serve(tenant, tls_files)
    try:
        source = RestInventoryLookup(settings(tmp_path, url, ca_file=tls_files.ca_cert))
        assert source("ac:63:be:12:34:56") == Button(name="Aisle 2 screws",
                                                     mac="ac:63:be:12:34:56")
        source.close()
        clock = Clock()
        untrusted = make_source(settings(tmp_path, url), clock)
        with pytest.raises(InventoryError) as info:
            untrusted("ac:63:be:12:34:56")
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
        untrusted.close()
    finally:
        server.shutdown()
        server.server_close()
