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
        self.http = HttpServer(self.api)
        self.mqtt_port: int | None = None
        self.mqtts_port: int | None = None
        self.http_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._stopped: asyncio.Event | None = None
        self._save_handle: asyncio.TimerHandle | None = None

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
                # user name and password of CONNECT (impl.md, "Connecting via MQTT").
                context.verify_mode = ssl.CERT_OPTIONAL
                context.load_verify_locations(cafile=str(self.options.trusted_ca))
            server = await asyncio.start_server(self.broker.handle, bind, self.options.mqtts_port,
                                                ssl=context)
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
