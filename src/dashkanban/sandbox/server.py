"""`Sandbox`: the broker, the REST API and the page on one event loop in a background thread.

For tests and the demo:

    with Sandbox(SandboxOptions(password="pw")) as sandbox:   # free ports, loopback
        ... sandbox.mqtt_port, sandbox.http_url, sandbox.store ...

`start()` returns once every listener accepts; `stop()` closes them and ends the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from dashkanban.sandbox.broker import Broker, BrokerRules, SubscribeRecord
from dashkanban.sandbox.http import HttpServer
from dashkanban.sandbox.registration import Accounts, Registrations
from dashkanban.sandbox.rest import RestApi
from dashkanban.sandbox.smartrest import SmartRestProcessor
from dashkanban.sandbox.store import SERIAL, Doc, MessageRecord, Store
from dashkanban.sandbox.templates import COLLECTION_TYPE
from dashkanban.sandbox.tokens import DEFAULT_LIFETIME, TokenIssuer

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
TLS_HELLO_WAIT = 5.0  # seconds a closed-on-purpose handshake waits for the ClientHello
TLS_HANDSHAKE = 10.0
SAVE_DELAY = 1.0


@dataclass(frozen=True, slots=True)
class SandboxOptions:
    """Ports 0 pick free ports; None turns a listener off. TLS needs `tls_cert` and `tls_key`."""

    password: str
    tenant: str = "t12345"
    user: str = "admin"
    bind: str = "127.0.0.1"
    mqtt_port: int | None = 0
    mqtts_port: int | None = None
    http_port: int | None = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    data_file: Path | None = None
    rules: BrokerRules = field(default_factory=BrokerRules)
    # The password of `management/devicebootstrap` (device registration); None: no bootstrap user.
    bootstrap_password: str | None = None
    # Certificate login on the TLS listener: the CA the tenant trusts (Cumulocity's "trusted
    # certificates"); a client certificate that chains to it logs in as its CN.
    trusted_ca: Path | None = None
    # Lifetime of the device tokens of `s/uat` (`device-token.lifespan.seconds`, 1 h by default).
    token_lifetime: float = DEFAULT_LIFETIME
    # Device tokens read only the managed objects their device owns (403 on the others).
    devices_read_own_only: bool = False

    def __repr__(self) -> str:  # never print the password
        return (f"SandboxOptions(tenant={self.tenant!r}, user={self.user!r}, bind={self.bind!r}, "
                f"mqtt_port={self.mqtt_port}, mqtts_port={self.mqtts_port}, "
                f"http_port={self.http_port})")

    @property
    def username(self) -> str:
        return f"{self.tenant}/{self.user}"


class SandboxError(Exception):
    """The sandbox could not start (a port in use, an unreadable certificate or data file)."""


class Sandbox:
    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.store = Store()
        self.processor = SmartRestProcessor(self.store, owner=options.user)
        self.accounts = Accounts(options.username, options.password, options.bootstrap_password)
        self.registrations = Registrations(options.tenant, self.accounts)
        self.tokens = TokenIssuer(self.store.now, options.token_lifetime)
        self.broker = Broker(self.store, self.processor, self.accounts.authenticate,
                             options.rules, tokens=self.tokens)
        self.broker.registrations = self.registrations
        self.api = RestApi(self.store, options.username, options.password,
                           self.broker.operation_created, accounts=self.accounts,
                           registrations=self.registrations, tokens=self.tokens,
                           devices_read_own_only=options.devices_read_own_only)
        self.api.misbehave = self._misbehave
        self.http = HttpServer(self.api)
        self.mqtt_port: int | None = None
        self.mqtts_port: int | None = None
        self.http_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._stopped: asyncio.Event | None = None
        self._save_handle: asyncio.TimerHandle | None = None
        self._tls_context: ssl.SSLContext | None = None

    # -- public -----------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{_host(self.options.bind)}:{self.http_port}"

    @property
    def host(self) -> str:
        return _host(self.options.bind)

    def start(self) -> Sandbox:
        if self.options.data_file is not None and self.options.data_file.exists():
            try:
                self.store.load_json(self.options.data_file.read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise SandboxError(f"cannot read the sandbox data file "
                                   f"{self.options.data_file}: {exc}") from None
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="sandbox",
                                        daemon=True)
        self._thread.start()
        try:
            ready.result(timeout=START_TIMEOUT)
        except BaseException:
            self._thread.join(timeout=START_TIMEOUT)
            self._loop = self._thread = None
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._stopped is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stopped.set)
        thread.join(timeout=START_TIMEOUT)
        self._loop = self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def call(self, function: Any, *args: Any) -> Any:
        """Run `function(*args)` on the sandbox's loop and return its result (thread-safe)."""
        if self._loop is None:
            return function(*args)

        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(START_TIMEOUT)

    def call_async(self, function: Any, *args: Any) -> Any:
        """`call`, for a function that needs the running loop (the sandbox must be started)."""
        if self._loop is None:
            raise SandboxError("the sandbox is not running")

        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(START_TIMEOUT)

    def create_operation(self, device_id: str, fragments: Doc) -> Doc:
        """As `POST /devicecontrol/operations`: stored PENDING and pushed on `s/ds` if connected."""

        def create() -> Doc:
            op = self.store.create_operation(device_id, fragments)
            self.broker.operation_created(op)
            return op

        result: Doc = self.call(create)
        return result

    def drop_connection(self, serial: str) -> bool:
        """Close the MQTT connection of a device uncleanly, as a flaky network would."""
        dropped: bool = self.call(self.broker.drop_device, serial)
        return dropped

    def register_device(self, device_id: str, one_time_password: str | None = None) -> None:
        """As an operator entering the ID in Device Management > Registration (with a one-time
        password for certificate enrolment over EST)."""
        self.call(self.registrations.register, device_id, one_time_password)

    def registration_status(self, device_id: str) -> str | None:
        item = self.call(self.registrations.get, device_id)
        return None if item is None else str(item.status)

    def accept_device(self, device_id: str) -> None:
        """As an operator clicking Accept; raises RegistrationError when it is not pending."""
        self.call(self.registrations.accept, device_id)

    @property
    def ca_pem(self) -> bytes:
        """The certificate of the CA that signs EST enrolments (made at first use)."""
        pem: bytes = self.call(lambda: self.registrations.ca.pem)
        return pem

    # misbehaviour on purpose, for reconnect tests -------------------------------------------
    def refuse_logins(self, count: int, code: int = 5) -> None:
        """Answer the next `count` MQTT logins with CONNACK `code` (1..5), then accept again."""
        self.call(self.broker.refuse_logins, count, code)

    def logins_to_refuse(self) -> int:
        """How many of the refusals asked for by `refuse_logins` are still to come."""
        left: int = self.call(lambda: self.broker.refusals_left)
        return left

    def drop_all_connections(self) -> int:
        """Close every MQTT connection uncleanly; returns how many there were."""
        dropped: int = self.call(self.broker.drop_all)
        return dropped

    def close_tls_handshakes(self, count: int) -> None:
        """Close the next `count` TLS connections after the ClientHello without answering it
        (the client sees an unexpected EOF mid-handshake); the ones after are served."""
        if count < 0:
            raise ValueError("count must be >= 0")

        def set_count() -> None:
            self.broker.tls_closes_left = count

        self.call(set_count)

    def close_tls_handshakes_for(self, seconds: float) -> None:
        """Close every TLS handshake, unanswered, for the next `seconds` (0 ends it)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")

        def set_until() -> None:
            loop = asyncio.get_running_loop()
            self.broker.tls_close_until = loop.time() + seconds if seconds else 0.0

        self.call_async(set_until)

    def tls_handshakes_to_close(self) -> int:
        left: int = self.call(lambda: self.broker.tls_closes_left)
        return left

    def set_password(self, password: str) -> None:
        """Reload the one user's credentials: MQTT logins and REST calls from now on need
        `password`; connections already open stay open."""
        self.call(self._reload_password, password)

    def _reload_password(self, password: str) -> None:
        self.options = dataclasses.replace(self.options, password=password)
        self.accounts.set_tenant_password(self.options.username, password)

    def _misbehave(self, request: dict[str, Any]) -> dict[str, Any]:
        """`POST /sandbox/misbehave` (on the loop): the same knobs for a test in another
        process. Keys, each optional: `refuse_logins` {"count", "code"}, `close_tls_handshakes`
        (a count), `close_tls_handshakes_for` (seconds), `drop_connections` (true), `password`
        (the new one)."""
        known = {"refuse_logins", "close_tls_handshakes", "close_tls_handshakes_for",
                 "drop_connections", "password"}
        unknown = sorted(set(request) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: {sorted(known)}")
        dropped = 0
        refuse = request.get("refuse_logins")
        if refuse is not None:
            if not isinstance(refuse, dict) or not all(
                    isinstance(refuse.get(k), int) for k in ("count", "code")):
                raise ValueError('refuse_logins needs {"count": N, "code": 1..5}')
            self.broker.refuse_logins(refuse["count"], refuse["code"])
        closes = request.get("close_tls_handshakes")
        if closes is not None:
            if not isinstance(closes, int) or closes < 0:
                raise ValueError("close_tls_handshakes needs a count >= 0")
            self.broker.tls_closes_left = closes
        seconds = request.get("close_tls_handshakes_for")
        if seconds is not None:
            if not isinstance(seconds, int | float) or seconds < 0:
                raise ValueError("close_tls_handshakes_for needs seconds >= 0")
            loop = asyncio.get_running_loop()
            self.broker.tls_close_until = loop.time() + seconds if seconds else 0.0
        if request.get("drop_connections") is True:
            dropped = self.broker.drop_all()
        password = request.get("password")
        if password is not None:
            if not isinstance(password, str) or not password:
                raise ValueError("password needs a non-empty string")
            self._reload_password(password)
        return {"logins_to_refuse": self.broker.refusals_left,
                "tls_handshakes_to_close": self.broker.tls_closes_left, "dropped": dropped}

    def stats(self) -> dict[str, int]:
        """Broker counters: connections, refused, malformed, oversized, timeouts, ..."""
        counters: dict[str, int] = self.call(lambda: dict(self.broker.stats))
        return counters

    def unacknowledged_peak(self, client_id: str) -> int:
        """The most QoS 1 messages `client_id` had unacknowledged at once (with a queue rule)."""
        peak: int = self.call(lambda: self.broker.unacknowledged_peak.get(client_id, 0))
        return peak

    # read access for tests and the demo ------------------------------------------------------
    def device_id(self, serial: str) -> str | None:
        return self.store.find_external(SERIAL, serial)

    def device(self, serial: str) -> Doc | None:
        mo_id = self.device_id(serial)
        return self.store.get_managed_object(mo_id) if mo_id else None

    def devices(self) -> list[Doc]:
        """Devices without a parent (gateways and single devices); template collections are
        managed objects too, but no devices."""
        return [d for d in self.store.list_managed_objects()
                if not d["_parents"] and d.get("type") != COLLECTION_TYPE]

    def children(self, serial: str) -> list[Doc]:
        mo_id = self.device_id(serial)
        if mo_id is None:
            return []
        return [self.store.get_managed_object(c) for c in self.store.children_ids(mo_id)]

    def events(self, serial: str | None = None) -> list[Doc]:
        """Events in the order they were created (of one device if `serial` is given)."""
        source = self.device_id(serial) if serial is not None else None
        with self.store.lock:
            return [dict(e) for e in self.store.events if source is None or e["source"] == source]

    def alarms(self) -> list[Doc]:
        with self.store.lock:
            return [dict(a) for a in self.store.alarms]

    def emails(self) -> list[Doc]:
        """The e-mails the Smart Rules would have sent, oldest first (also GET /sandbox/emails)."""
        return self.api.smart_rules.recorded()

    def messages(self) -> list[MessageRecord]:
        with self.store.lock:
            return list(self.store.messages)

    def subscriptions(self) -> list[SubscribeRecord]:
        """Every SUBSCRIBE since start, in order; `after` is its place in `messages()`."""
        records: list[SubscribeRecord] = self.call(lambda: list(self.broker.subscribe_log))
        return records

    # -- loop -------------------------------------------------------------------------------
    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        finally:
            loop.close()

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        self._stopped = asyncio.Event()
        try:
            await self._listen()
        except (OSError, ssl.SSLError) as exc:
            await self._close()
            ready.set_exception(SandboxError(f"the sandbox cannot listen: {exc}"))
            return
        if self.options.data_file is not None:
            loop = asyncio.get_running_loop()

            def changed() -> None:
                loop.call_soon_threadsafe(self._schedule_save)

            self.store.on_change(changed)
        ready.set_result(None)
        await self._stopped.wait()
        await self._close()

    async def _listen(self) -> None:
        bind = self.options.bind
        if self.options.mqtt_port is not None:
            server = await asyncio.start_server(self.broker.handle, bind, self.options.mqtt_port)
            self._servers.append(server)
            self.mqtt_port = _port(server)
        if self.options.mqtts_port is not None:
            if self.options.tls_cert is None or self.options.tls_key is None:
                raise ssl.SSLError("an MQTT-over-TLS listener needs a certificate and its key")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.options.tls_cert, self.options.tls_key)
            if self.options.trusted_ca is not None:
                # Port 8883 takes both: a client certificate if one is presented, else the
                # user name and password of CONNECT (docs/protocol.md 1.2).
                context.verify_mode = ssl.CERT_OPTIONAL
                context.load_verify_locations(cafile=str(self.options.trusted_ca))
                # The tenant's own CA (EST enrolment) is a trusted certificate too: creating it
                # stores "the certificate in the trusted certificate repository"
                # (create-certificate-authority.md).
                context.load_verify_locations(cadata=self.registrations.ca.pem.decode("ascii"))
            self._tls_context = context
            # Plain TCP first, TLS started by `_handle_tls`: so that a handshake can be closed
            # unanswered on purpose (`close_tls_handshakes`), as a load balancer in trouble does.
            server = await asyncio.start_server(self._handle_tls, bind, self.options.mqtts_port)
            self._servers.append(server)
            self.mqtts_port = _port(server)
        if self.options.http_port is not None:
            server = await asyncio.start_server(self.http.handle, bind, self.options.http_port)
            self._servers.append(server)
            self.http_port = _port(server)
        listening = [f"{name} {port}" for name, port in (
            ("MQTT", self.mqtt_port), ("MQTT/TLS", self.mqtts_port), ("HTTP", self.http_port)
        ) if port is not None]
        log.info("sandbox listening: %s", ", ".join(listening))

    async def _handle_tls(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        assert self._tls_context is not None
        closing_for_a_while = asyncio.get_running_loop().time() < self.broker.tls_close_until
        if self.broker.tls_closes_left > 0 or closing_for_a_while:
            if not closing_for_a_while:
                self.broker.tls_closes_left -= 1
            self.broker.stats["tls_closed"] += 1
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                async with asyncio.timeout(TLS_HELLO_WAIT):
                    await reader.read(1)  # the ClientHello has begun: close mid-handshake
            log.info("closing a TLS handshake unanswered on request")
            writer.close()
            return
        try:
            await writer.start_tls(self._tls_context, ssl_handshake_timeout=TLS_HANDSHAKE)
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("TLS handshake failed: %s", exc)
            writer.close()
            return
        await self.broker.handle(reader, writer)

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        await self.broker.close()
        await self.http.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        if self._save_handle is not None:
            self._save_handle.cancel()
        self._save()

    def _schedule_save(self) -> None:
        # Coalesce bursts of changes into one write a second.
        if self._save_handle is None and self._loop is not None:
            self._save_handle = self._loop.call_later(SAVE_DELAY, self._save)

    def _save(self) -> None:
        self._save_handle = None
        if self.options.data_file is None:
            return
        try:
            self.store.save(self.options.data_file)
        except OSError as exc:
            log.error("cannot save the sandbox data to %s: %s", self.options.data_file, exc)


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def _host(bind: str) -> str:
    return "127.0.0.1" if bind in ("", "0.0.0.0") else bind
