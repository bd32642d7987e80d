"""The sandbox's MQTT 3.1.1 broker, with Cumulocity's connection rules (docs/protocol.md 1 and 6.1).

It is no general-purpose broker: devices cannot talk to each other. What a device publishes on
`s/us` goes to the SmartREST processor; what the platform answers goes back on `s/ds` and `s/e` to
that client only (a client sees only its own device tree). Everything runs on one asyncio loop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dashkanban.c8y.smartrest import encode_line
from dashkanban.sandbox import packets as mq
from dashkanban.sandbox.connections import Connections
from dashkanban.sandbox.registration import BOOTSTRAP_USERNAME, Registrations
from dashkanban.sandbox.smartrest import DOWN_ERRORS, DOWN_OPERATIONS, SmartRestProcessor
from dashkanban.sandbox.store import MESSAGE_LOG_SIZE, SERIAL, Doc, Store
from dashkanban.sandbox.tokens import TokenIssuer

log = logging.getLogger(__name__)

# Device credentials: requests up, `70,...` down (lifecycle-mqtt.md, docs/protocol.md 1.9).
BOOTSTRAP_REQUEST = "s/ucr"
BOOTSTRAP_RESPONSE = "s/dcr"
# "16184 bytes ... header included" (docs/protocol.md 1.6).
MAX_MESSAGE_BYTES = 16_184
CONNECT_TIMEOUT = 10.0
# JWT for certificate devices (device-certificates.md, docs/protocol.md 1.8).
JWT_UP = "s/uat"  # topic names, not secrets
JWT_DOWN = "s/dat"
JWT_REFUSAL_LINE = (
    "41,,MqttAuth: Cannot publish token for device that do not use certificate authentication"
)


@dataclass(frozen=True, slots=True)
class BrokerRules:
    """The knobs of Cumulocity's behaviour that tests may want to turn."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    # Before the device exists, refuse `s/ds` with SUBACK 0x80, as seen on a real tenant
    # (docs/protocol.md 1.10, [FIELD]); off by default.
    refuse_subscribe_before_device: bool = False
    # Push PENDING operations when a device subscribes to `s/ds`; off by default, so `500`
    # is needed (the MQTT Service never pushes them; docs/protocol.md 2.6).
    push_pending_on_subscribe: bool = False
    # Answer every CONNECT with this CONNACK code (3 server unavailable, 5 not authorised,
    # which Cumulocity also sends on transient trouble; docs/protocol.md 1.7), to test reconnect
    # paths.
    refuse_with: int | None = None
    # "If the queue limit number is exceeded, the client messages are rejected and the client is
    # disconnected" (smartrest-two.md, docs/protocol.md 1.6): a client with more than this many
    # QoS 1/2 messages received but not yet acknowledged is dropped. None: no limit. Cumulocity
    # does not document its number ([unverified]); tests choose one.
    queue_limit: int | None = None
    # Seconds the platform takes per QoS 1/2 message before its PUBACK, so a client that does not
    # pace itself builds up a queue the way it would against a loaded tenant. 0: at once.
    ack_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class ClientId:
    """`[d:]id[:xid]` (docs/protocol.md 1.3)."""

    device: str
    template: str | None


def parse_client_id(client_id: str) -> ClientId | None:
    """The parts of a client id, or None when Cumulocity would refuse it (CONNACK 2).
    `:` must not be used inside the device identifier; a template id needs the `d:` prefix."""
    parts = client_id.split(":")
    if len(parts) == 1:
        device, template = parts[0], None
    elif len(parts) == 2 and parts[0] == "d":
        device, template = parts[1], None
    elif len(parts) == 3 and parts[0] == "d" and parts[2]:
        device, template = parts[1], parts[2]
    else:
        return None
    if not device.strip():
        return None
    return ClientId(device, template)


@dataclass(frozen=True, slots=True)
class SubscribeRecord:
    """One SUBSCRIBE the broker answered. The message log holds only PUBLISHes, so `after` (how
    many messages the store had recorded when it came) places it within `Sandbox.messages()`."""

    client_id: str
    topics: tuple[str, ...]
    granted: tuple[int, ...]
    after: int


@dataclass(eq=False)
class _Session:
    client_id: str
    device: str
    writer: asyncio.StreamWriter
    will: mq.Will | None
    subscriptions: dict[str, int] = field(default_factory=dict)
    next_packet_id: int = 0
    qos2_seen: set[int] = field(default_factory=set)
    # 1.5 x keepalive without a packet closes the connection (MQTT 3.1.1, docs/protocol.md 1.4).
    timeout: float | None = None
    clean_exit: bool = False
    dropped: bool = False
    bootstrap: bool = False  # logged in as the bootstrap user: only s/ucr and s/dcr
    # Logged in with a TLS client certificate (its CN is the device id): may ask for a token.
    by_certificate: bool = False
    unacknowledged: int = 0
    # While one of its PUBLISHes is processed: what the platform answers, sent after its PUBACK.
    held: list[bytes] | None = None

    def packet_id(self) -> int:
        self.next_packet_id = self.next_packet_id % 65535 + 1
        return self.next_packet_id

    def send(self, data: bytes) -> None:
        if self.held is not None:
            self.held.append(data)
        elif not self.writer.is_closing():
            self.writer.write(data)


class _DropError(Exception):
    """Close this connection (a protocol violation or a Cumulocity rule)."""


class Broker:
    """Serves one listener or more; `handle` is the asyncio stream callback."""

    def __init__(self, store: Store, processor: SmartRestProcessor,
                 authenticate: Callable[[str | None, bytes | None], bool],
                 rules: BrokerRules | None = None, *,
                 tokens: TokenIssuer | None = None) -> None:
        self.store = store
        self.tokens = tokens
        self.processor = processor
        self.authenticate = authenticate
        self.rules = rules or BrokerRules()
        self.sessions: dict[str, _Session] = {}
        # connections, refused, malformed, oversized, timeouts, taken_over, messages_in/out
        self.stats: Counter[str] = Counter()
        # Read by tests through `Sandbox.subscriptions()`; bounded like the message log.
        self.subscribe_log: deque[SubscribeRecord] = deque(maxlen=MESSAGE_LOG_SIZE)
        # Device registration (s/ucr -> 70 on s/dcr); None: the bootstrap topics are refused.
        self.registrations: Registrations | None = None
        # The most QoS 1/2 messages each client id had unacknowledged at once (queued path only).
        self.unacknowledged_peak: dict[str, int] = {}
        self._connections = Connections()
        # Misbehaviour on purpose, for reconnect tests (`Sandbox.refuse_logins` and friends).
        self._refusals_left = 0
        self._refusal_code = mq.NOT_AUTHORIZED
        self.tls_closes_left = 0
        self.tls_close_until = 0.0  # loop time before which every TLS handshake is closed

    # -- misbehaviour on purpose -------------------------------------------------------------
    def refuse_logins(self, count: int, code: int) -> None:
        """Answer the next `count` CONNECTs with CONNACK `code` (1..5), whatever they carry; then
        the usual checks again. Cumulocity sends 5 also on transient trouble and when a user's
        permissions are removed (docs/protocol.md 1.7); 4 is a wrong password; 3 the platform is
        down."""
        if count < 0 or not 1 <= code <= 5:
            raise ValueError("refuse_logins needs count >= 0 and a CONNACK code from 1 to 5")
        self._refusals_left, self._refusal_code = count, code

    @property
    def refusals_left(self) -> int:
        return self._refusals_left

    def set_authenticate(self, authenticate: Callable[[str | None, bytes | None], bool]) -> None:
        """New credentials for the next logins; connected clients stay connected."""
        self.authenticate = authenticate

    def drop_all(self) -> int:
        """Close every connection uncleanly; how many there were."""
        sessions = list(self.sessions.values())
        for session in sessions:
            log.info("dropping the connection of %s on request", session.client_id)
            self.drop(session)
        return len(sessions)

    # -- connection lifecycle ---------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._connections.serving(writer):
            await self._handle(reader, writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        session: _Session | None = None
        self.stats["connections"] += 1
        try:
            session = await self._connect(reader, writer)
            if session is not None:
                await self._serve(session, reader)
        except _DropError as exc:
            log.warning("closing MQTT connection from %s: %s",
                        session.client_id if session else peer, exc)
        except TimeoutError:
            self.stats["timeouts"] += 1
            log.info("closing MQTT connection from %s: no packet within 1.5 x keepalive",
                     session.client_id if session else peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only `close()` cancels: the sandbox stops, so no last will. Not re-raised, as
            # Python 3.11's stream callback logs a cancelled handler task as an error.
            if session is not None:
                session.clean_exit = True
        finally:
            if session is not None:
                self._end(session)

    async def _read_packet(self, reader: asyncio.StreamReader, timeout: float | None) -> mq.Packet:
        async with asyncio.timeout(timeout):
            first = (await reader.readexactly(1))[0]
            header = b""
            while True:
                header += await reader.readexactly(1)
                try:
                    decoded = mq.decode_remaining_length(header)
                except mq.MalformedPacketError as exc:
                    self.stats["malformed"] += 1
                    raise _DropError(f"malformed packet: {exc}") from None
                if decoded is not None:
                    break
            length, used = decoded
            total = 1 + used + length
            if total > self.rules.max_message_bytes:
                # Cumulocity's limit; the platform closes the connection (docs/protocol.md 1.6 and
                # 6.1).
                limit = self.rules.max_message_bytes
                self.stats["oversized"] += 1
                raise _DropError(f"message of {total} bytes exceeds the {limit}-byte limit")
            body = await reader.readexactly(length)
        try:
            return mq.decode_packet(first, body)
        except mq.MalformedPacketError as exc:
            self.stats["malformed"] += 1
            raise _DropError(f"malformed packet: {exc}") from None

    async def _connect(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> _Session | None:
        packet = await self._read_packet(reader, CONNECT_TIMEOUT)
        if not isinstance(packet, mq.Connect):
            self.stats["malformed"] += 1  # a protocol violation (MQTT 3.1.1, 3.1.0-1)
            raise _DropError("the first packet is not CONNECT")
        common_name = _common_name(writer.get_extra_info("peercert"))
        code = self._check_connect(packet, common_name)
        if code != mq.ACCEPTED:
            self.stats["refused"] += 1
            writer.write(mq.connack(code))
            await writer.drain()
            log.info("refused MQTT client %r: CONNACK %d", packet.client_id, code)
            return None
        parsed = parse_client_id(packet.client_id)
        assert parsed is not None  # checked above
        older = self.sessions.get(parsed.device)
        if older is not None:
            # Only one connection per device identifier: the newer one wins (docs/protocol.md 1.3).
            log.warning("client id %s connected again: dropping the older connection",
                        parsed.device)
            self.stats["taken_over"] += 1
            self.drop(older)
        timeout = packet.keepalive * 1.5 if packet.keepalive else None
        session = _Session(packet.client_id, parsed.device, writer, packet.will, timeout=timeout,
                           bootstrap=packet.username == BOOTSTRAP_USERNAME,
                           by_certificate=common_name is not None)
        self.sessions[parsed.device] = session
        writer.write(mq.connack(mq.ACCEPTED))
        await writer.drain()
        log.info("MQTT client %s connected (keepalive %d s)", packet.client_id, packet.keepalive)
        return session

    def _check_connect(self, packet: mq.Connect, common_name: str | None = None) -> int:
        if self._refusals_left > 0:
            self._refusals_left -= 1
            return self._refusal_code
        # CONNACK codes as Cumulocity documents them (docs/protocol.md 1.7).
        if (packet.protocol_name, packet.protocol_level) not in (("MQTT", 4), ("MQIsdp", 3)):
            return mq.BAD_PROTOCOL
        parsed = parse_client_id(packet.client_id)
        if parsed is None:
            return mq.IDENTIFIER_REJECTED
        if packet.protocol_level == 3 and len(packet.client_id) >= 24:
            # MQTT 3.1 limits client ids to 23 characters; Cumulocity answers 5 (docs/protocol.md
            # 1.3).
            return mq.NOT_AUTHORIZED
        if common_name is not None:
            # "If the client provides a certificate, it will be used to authenticate the
            # client" and "the deviceIdentifier must match the 'Common Name' of the used
            # certificate"; any issue with certificate authentication is CONNACK 5, and 4 "is
            # never returned when authenticating with certificates" (docs/protocol.md 1.7).
            if parsed.device != common_name:
                return mq.NOT_AUTHORIZED
        elif not self.authenticate(packet.username, packet.password):
            return mq.BAD_CREDENTIALS
        if self.rules.refuse_with is not None:
            return self.rules.refuse_with
        if not packet.clean_session:
            # "Cumulocity IoT requires clean session to be set to '1'" (docs/protocol.md 1.4); the
            # MQTT
            # Service rejects the connection. [UNVERIFIED] the code; 5 = not authorised.
            return mq.NOT_AUTHORIZED
        return mq.ACCEPTED

    def drop(self, session: _Session) -> None:
        """Close a connection as the platform does on trouble: no DISCONNECT, so the will fires."""
        session.dropped = True
        session.writer.close()
        self._end(session)

    def drop_device(self, device: str) -> bool:
        session = self.sessions.get(device)
        if session is None:
            return False
        log.info("dropping the connection of %s on request", session.client_id)
        self.drop(session)
        return True

    def _end(self, session: _Session) -> None:
        if self.sessions.get(session.device) is session:
            del self.sessions[session.device]
        if session.will is not None and not session.clean_exit:
            will, session.will = session.will, None
            log.info("client %s left without DISCONNECT: last will on %s", session.client_id,
                     will.topic)
            self._upstream(session, will.topic, will.payload)

    # -- packets ----------------------------------------------------------------------------
    async def _serve(self, session: _Session, reader: asyncio.StreamReader) -> None:
        if self.rules.queue_limit is not None or self.rules.ack_delay > 0:
            await self._serve_queued(session, reader)
            return
        while not session.dropped:
            packet = await self._read_packet(reader, session.timeout)
            if isinstance(packet, mq.Connect):
                raise _DropError("a second CONNECT")
            if not self._on_packet(session, packet):
                return
            await session.writer.drain()

    def _on_packet(self, session: _Session, packet: mq.Packet) -> bool:
        """Handle one packet after CONNECT; False when it was DISCONNECT."""
        if isinstance(packet, mq.Publish):
            self._on_publish(session, packet)
        elif isinstance(packet, mq.Subscribe):
            self._on_subscribe(session, packet)
        elif isinstance(packet, mq.Unsubscribe):
            for name in packet.topics:
                session.subscriptions.pop(name, None)
            session.send(mq.unsuback(packet.packet_id))
        elif isinstance(packet, mq.Ack):
            if packet.kind == mq.PUBREL:
                session.qos2_seen.discard(packet.packet_id)
                session.send(mq.ack(mq.PUBCOMP, packet.packet_id))
            # PUBACK of our QoS 1 downlinks: nothing is kept to resend (clean session only).
        elif isinstance(packet, mq.Simple):
            if packet.kind == mq.PINGREQ:
                session.send(mq.PINGRESP_BYTES)
            else:
                session.clean_exit = True
                log.info("MQTT client %s disconnected", session.client_id)
                return False
        return True

    async def _serve_queued(self, session: _Session, reader: asyncio.StreamReader) -> None:
        """The platform's queue: packets are read at once but processed (and acknowledged) in
        order by a worker, `ack_delay` per QoS 1/2 message; more than `queue_limit` waiting
        disconnects the client (smartrest-two.md, docs/protocol.md 1.6)."""
        queue: asyncio.Queue[mq.Packet | None] = asyncio.Queue()
        worker = asyncio.create_task(self._work(session, queue))
        limit = self.rules.queue_limit
        try:
            while not session.dropped:
                packet = await self._read_packet(reader, session.timeout)
                if isinstance(packet, mq.Connect):
                    raise _DropError("a second CONNECT")
                if isinstance(packet, mq.Publish) and packet.qos:
                    session.unacknowledged += 1
                    peak = self.unacknowledged_peak.get(session.client_id, 0)
                    self.unacknowledged_peak[session.client_id] = max(peak,
                                                                      session.unacknowledged)
                    if limit is not None and session.unacknowledged > limit:
                        self.stats["queue_exceeded"] += 1
                        session.dropped = True
                        raise _DropError(f"more than {limit} unacknowledged messages: the "
                                         "queue limit is exceeded")
                await queue.put(packet)
                if isinstance(packet, mq.Simple) and packet.kind == mq.DISCONNECT:
                    session.clean_exit = True
                    break
        finally:
            await queue.put(None)
            if not session.dropped:
                await worker  # what arrived before the end is still processed, in order
            else:
                worker.cancel()

    async def _work(self, session: _Session, queue: asyncio.Queue[mq.Packet | None]) -> None:
        try:
            while not session.dropped:
                packet = await queue.get()
                if packet is None:
                    return
                counted = isinstance(packet, mq.Publish) and packet.qos > 0
                if counted and self.rules.ack_delay > 0:
                    await asyncio.sleep(self.rules.ack_delay)
                if session.dropped:
                    return
                self._on_packet(session, packet)
                if counted:
                    session.unacknowledged -= 1
                await session.writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return

    def _on_publish(self, session: _Session, packet: mq.Publish) -> None:
        if packet.qos == 2:
            duplicate = packet.packet_id in session.qos2_seen
            session.qos2_seen.add(packet.packet_id or 0)
            session.send(mq.ack(mq.PUBREC, packet.packet_id or 0))
            if duplicate:
                return
        # Cumulocity acknowledges a PUBLISH when it accepts it and processes it afterwards
        # ("PUBACK means accepted, not processed", docs/protocol.md 1.5): an error on `s/e`, or
        # an answer on `s/ds`, reaches the client after the PUBACK. The sandbox stores what the
        # line does first (so a test may read it once the PUBACK came) but holds the answers
        # back and writes them after the PUBACK (docs/sandbox.md).
        session.held = []
        try:
            if session.bootstrap:
                self._bootstrap_publish(session, packet)
            else:
                self._upstream(session, packet.topic, packet.payload)
        finally:
            held, session.held = session.held, None
        if packet.qos == 1:
            session.send(mq.ack(mq.PUBACK, packet.packet_id or 0))
        for data in held:
            session.send(data)

    def _upstream(self, session: _Session, topic: str, payload: bytes) -> None:
        self.stats["messages_in"] += 1
        self.store.record_message(session.client_id, "in", topic, payload)
        log.info("%s -> %s %s", session.client_id, topic, _show(payload))
        if topic == JWT_UP:
            self._token(session)
            return
        owner = f"device_{session.device}" if session.by_certificate else None
        for downlink in self.processor.handle(session.device, topic, payload, owner):
            self.deliver(session.device, downlink.topic, downlink.line)

    def _bootstrap_publish(self, session: _Session, packet: mq.Publish) -> None:
        # The bootstrap user may only ask for credentials (docs/protocol.md 6.1); anything else
        # closes the connection. [UNVERIFIED] what the platform does with other topics.
        if packet.topic != BOOTSTRAP_REQUEST:
            raise _DropError(f"the bootstrap user may publish only on {BOOTSTRAP_REQUEST}, "
                             f"not {packet.topic}")
        self.stats["messages_in"] += 1
        self.store.record_message(session.client_id, "in", packet.topic, packet.payload)
        log.info("%s -> %s (asks for device credentials)", session.client_id, packet.topic)
        if self.registrations is None:
            return
        issued = self.registrations.request(session.device)
        if issued is not None:
            # The password goes to the device only; the message log and the log line keep
            # the user name (the status page shows the log).
            line = encode_line(70, issued.tenant, issued.username, issued.password)
            self.deliver(session.device, BOOTSTRAP_RESPONSE, line,
                         shown=f"70,{issued.tenant},{issued.username},***")

    def _token(self, session: _Session) -> None:
        """`s/uat`: a certificate device gets `71,<JWT>` on `s/dat` (device-certificates.md); a
        password device an error on `s/e`, as seen on a real tenant (docs/protocol.md 1.8
        [FIELD])."""
        if session.by_certificate and self.tokens is not None:
            self.stats["tokens"] += 1
            self.deliver(session.device, JWT_DOWN, f"71,{self.tokens.issue(session.device)}")
        else:
            self.deliver(session.device, DOWN_ERRORS, JWT_REFUSAL_LINE)

    def _on_subscribe(self, session: _Session, packet: mq.Subscribe) -> None:
        codes = []
        for topic_filter, qos in packet.topics:
            if session.bootstrap and topic_filter != BOOTSTRAP_RESPONSE:
                # The bootstrap user reads only its credentials ([UNVERIFIED] the code).
                codes.append(mq.SUBACK_FAILURE)
            elif mq.topic_matches(topic_filter, "s/us") or mq.topic_matches(topic_filter, "s/us/x"):
                # Devices may not subscribe to upstream topics (docs/protocol.md 1.4).
                codes.append(mq.SUBACK_FAILURE)
            elif (self.rules.refuse_subscribe_before_device
                  and mq.topic_matches(topic_filter, DOWN_OPERATIONS)
                  and self.store.find_external(SERIAL, session.device) is None):
                codes.append(mq.SUBACK_FAILURE)
            else:
                granted = min(qos, 1)
                session.subscriptions[topic_filter] = granted
                codes.append(granted)
        session.send(mq.suback(packet.packet_id, codes))
        with self.store.lock:
            after = len(self.store.messages)
        self.subscribe_log.append(SubscribeRecord(
            session.client_id, tuple(t for t, _ in packet.topics), tuple(codes), after))
        log.info("MQTT client %s subscribed %s: %s", session.client_id,
                 [t for t, _ in packet.topics], codes)
        if self.rules.push_pending_on_subscribe:
            # Only what the new subscriptions cover: s/ds and/or s/dc/<X-ID>.
            accepted = [t for (t, _), code in zip(packet.topics, codes, strict=True)
                        if code != mq.SUBACK_FAILURE]
            root = self.store.find_external(SERIAL, session.device)
            if root is not None and accepted:
                for downlink in self.processor.pending_downlinks(root):
                    if any(mq.topic_matches(f, downlink.topic) for f in accepted):
                        self.deliver(session.device, downlink.topic, downlink.line)

    # -- downstream -------------------------------------------------------------------------
    def deliver(self, device: str, topic: str, line: str, shown: str | None = None) -> bool:
        """Send a line to the connected client of `device` if it subscribed to `topic`;
        `shown` replaces the line in the message log and the log (a line holding a password)."""
        session = self.sessions.get(device)
        if session is None:
            log.info("not delivered (%s is not connected): %s %s", device, topic, line)
            return False
        qos = max((q for f, q in session.subscriptions.items() if mq.topic_matches(f, topic)),
                  default=None)
        if qos is None:
            log.info("not delivered (%s did not subscribe to %s): %s", device, topic, line)
            return False
        payload = line.encode("utf-8")
        session.send(mq.publish(topic, payload, qos, session.packet_id() if qos else None))
        self.stats["messages_out"] += 1
        logged = payload if shown is None else shown.encode("utf-8")
        if topic == JWT_DOWN:
            # A device token is a REST credential: never in the message log (the open status
            # page shows it), nor in a log line.
            logged = b"71,<token>"
        self.store.record_message(session.client_id, "out", topic, logged)
        level = logging.WARNING if topic == DOWN_ERRORS else logging.INFO
        log.log(level, "%s <- %s %s", session.client_id, topic, _show(logged))
        return True

    def operation_created(self, op: Doc) -> bool:
        """An operation made over REST reaches its device tree's connection: on `s/ds` if a
        static template fits, on `s/dc/<X-ID>` for each response template that matches."""
        root = self.store.root_of(str(op["deviceId"]))
        device = self.store.serial_of(root)
        if device is None:
            return False
        delivered = [self.deliver(device, d.topic, d.line)
                     for d in self.processor.operation_downlinks(op)]
        return any(delivered)

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            session.clean_exit = True
            session.writer.close()
        await self._connections.close_all()


def _show(payload: bytes) -> str:
    text = payload.decode("utf-8", errors="replace")
    return text if len(text) <= 300 else text[:300] + f"... ({len(payload)} bytes)"


def _common_name(peercert: object) -> str | None:
    """The CN of a verified client certificate (`ssl` decodes it only when it verified)."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def check_password(expected_user: str, expected_password: str) -> Callable[
    [str | None, bytes | None], bool
]:
    """The sandbox's one user: `tenant/user` and its password, compared in constant time."""

    def authenticate(username: str | None, password: bytes | None) -> bool:
        if username is None or password is None:
            return False
        user_ok = hmac.compare_digest(username.encode(), expected_user.encode())
        pw_ok = hmac.compare_digest(password, expected_password.encode())
        return user_ok and pw_ok

    return authenticate
