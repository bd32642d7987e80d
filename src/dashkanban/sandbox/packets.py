"""MQTT 3.1.1 control packets: bytes in, typed values out, and back (pure).

Only what a device-facing broker needs: CONNECT, PUBLISH, PUBACK, PUBREC/PUBREL/PUBCOMP, SUBSCRIBE,
UNSUBSCRIBE, PINGREQ and DISCONNECT in; CONNACK, PUBLISH, PUBACK, SUBACK, UNSUBACK and PINGRESP out.
A malformed packet raises `MalformedPacketError`; the broker then closes the connection (MQTT 3.1.1
section 4.8: a protocol violation closes the network connection).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

# CONNACK return codes as Cumulocity uses them (docs/protocol.md 1.7).
ACCEPTED = 0
BAD_PROTOCOL = 1
IDENTIFIER_REJECTED = 2
SERVER_UNAVAILABLE = 3
BAD_CREDENTIALS = 4
NOT_AUTHORIZED = 5

SUBACK_FAILURE = 0x80


class MalformedPacketError(ValueError):
    """The bytes are not a valid MQTT 3.1.1 packet."""


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Connect:
    protocol_name: str
    protocol_level: int
    clean_session: bool
    keepalive: int
    client_id: str
    will: Will | None
    username: str | None
    password: bytes | None


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP: a kind and a packet id."""

    kind: int
    packet_id: int


@dataclass(frozen=True, slots=True)
class Simple:
    """PINGREQ or DISCONNECT."""

    kind: int


Packet = Connect | Publish | Subscribe | Unsubscribe | Ack | Simple


def decode_remaining_length(data: bytes) -> tuple[int, int] | None:
    """(length, bytes used) of a fixed header's Remaining Length; None if more bytes are needed."""
    value = 0
    for i in range(4):
        if i >= len(data):
            return None
        byte = data[i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise MalformedPacketError("remaining length longer than 4 bytes")


def encode_remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte = length % 128
        length //= 128
        if length:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise MalformedPacketError("packet too short")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise MalformedPacketError("packet too short")
        (value,) = struct.unpack_from("!H", self.data, self.pos)
        self.pos += 2
        return int(value)

    def blob(self) -> bytes:
        length = self.u16()
        if self.pos + length > len(self.data):
            raise MalformedPacketError("string runs past the end of the packet")
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def text(self) -> str:
        raw = self.blob()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacketError("string is not UTF-8") from exc
        if "\x00" in value:
            raise MalformedPacketError("string holds U+0000")
        return value

    def rest(self) -> bytes:
        value = self.data[self.pos :]
        self.pos = len(self.data)
        return value

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


def decode_packet(first: int, body: bytes) -> Packet:
    """One packet from its first byte and its body (the bytes after the Remaining Length)."""
    kind, flags = first >> 4, first & 0x0F
    r = _Reader(body)
    if kind == CONNECT:
        return _decode_connect(r)
    if kind == PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise MalformedPacketError("PUBLISH with QoS 3")
        topic = r.text()
        if not topic or "+" in topic or "#" in topic:
            raise MalformedPacketError("PUBLISH topic is empty or holds a wildcard")
        packet_id = r.u16() if qos else None
        return Publish(topic, r.rest(), qos, bool(flags & 1), bool(flags & 8), packet_id)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return Ack(kind, r.u16())
    if kind == SUBSCRIBE:
        if flags != 0x2:
            raise MalformedPacketError("SUBSCRIBE with reserved flags other than 0010")
        packet_id = r.u16()
        topics = []
        while not r.at_end():
            topic = r.text()
            qos = r.u8()
            if qos > 2:
                raise MalformedPacketError("SUBSCRIBE with a requested QoS above 2")
            topics.append((topic, qos))
        if not topics:
            raise MalformedPacketError("SUBSCRIBE without a topic filter")
        return Subscribe(packet_id, tuple(topics))
    if kind == UNSUBSCRIBE:
        packet_id = r.u16()
        names = []
        while not r.at_end():
            names.append(r.text())
        if not names:
            raise MalformedPacketError("UNSUBSCRIBE without a topic filter")
        return Unsubscribe(packet_id, tuple(names))
    if kind in (PINGREQ, DISCONNECT):
        return Simple(kind)
    raise MalformedPacketError(f"unexpected packet type {kind} from a client")


def _decode_connect(r: _Reader) -> Connect:
    name = r.text()
    level = r.u8()
    flags = r.u8()
    if flags & 0x01:
        raise MalformedPacketError("CONNECT reserved flag set")
    keepalive = r.u16()
    client_id = r.text()
    will = None
    if flags & 0x04:
        will_topic = r.text()
        will_payload = r.blob()
        will = Will(will_topic, will_payload, (flags >> 3) & 0x03, bool(flags & 0x20))
    username = r.text() if flags & 0x80 else None
    password = r.blob() if flags & 0x40 else None
    return Connect(name, level, bool(flags & 0x02), keepalive, client_id, will, username, password)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_remaining_length(len(body)) + body


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def connack(code: int, session_present: bool = False) -> bytes:
    return bytes([CONNACK << 4, 2, 1 if session_present else 0, code])


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int | None = None) -> bytes:
    """An outgoing PUBLISH, never retained: Cumulocity's downstream messages carry no retain."""
    body = _text(topic)
    if qos:
        body += struct.pack("!H", packet_id or 0)
    return _packet((PUBLISH << 4) | (qos << 1), body + payload)


def ack(kind: int, packet_id: int) -> bytes:
    flags = 0x2 if kind == PUBREL else 0
    return bytes([(kind << 4) | flags, 2]) + struct.pack("!H", packet_id)


def suback(packet_id: int, codes: list[int]) -> bytes:
    return _packet(SUBACK << 4, struct.pack("!H", packet_id) + bytes(codes))


def unsuback(packet_id: int) -> bytes:
    return ack(UNSUBACK, packet_id)


PINGRESP_BYTES = bytes([PINGRESP << 4, 0])


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching with `+` and `#`."""
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts):
            return False
        if part not in ("+", t_parts[i]):
            return False
    return len(f_parts) == len(t_parts)
