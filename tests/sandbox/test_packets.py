"""MQTT 3.1.1 packets: hand-built bytes in, exact values out (spec examples)."""

from __future__ import annotations

import pytest

from dashkanban.sandbox import packets as mq


def connect_bytes(client_id: str, *, user: str | None = None, password: str | None = None,
                  name: bytes = b"MQTT", level: int = 4, clean: bool = True,
                  will: tuple[str, str] | None = None, keepalive: int = 60) -> bytes:
    """A CONNECT packet, built by hand from the MQTT 3.1.1 spec (section 3.1)."""

    def s(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    flags = (0x02 if clean else 0) | (0x80 if user is not None else 0)
    flags |= 0x40 if password is not None else 0
    payload = s(client_id.encode())
    if will is not None:
        flags |= 0x04 | 0x08  # will, QoS 1
        payload += s(will[0].encode()) + s(will[1].encode())
    if user is not None:
        payload += s(user.encode())
    if password is not None:
        payload += s(password.encode())
    body = s(name) + bytes([level, flags]) + keepalive.to_bytes(2, "big") + payload
    return bytes([0x10]) + mq.encode_remaining_length(len(body)) + body


@pytest.mark.parametrize(("length", "encoded"), [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"), (268_435_455, b"\xff\xff\xff\x7f"),
])
def test_remaining_length_both_ways(length: int, encoded: bytes) -> None:
    assert mq.encode_remaining_length(length) == encoded
    assert mq.decode_remaining_length(encoded) == (length, len(encoded))


def test_remaining_length_needs_more_bytes_or_is_too_long() -> None:
    assert mq.decode_remaining_length(b"\x80") is None
    with pytest.raises(mq.MalformedPacketError, match="longer than 4 bytes"):
        mq.decode_remaining_length(b"\xff\xff\xff\xff\x01")


def test_connect_decodes_every_field() -> None:
    raw = connect_bytes("d:gw-01:tpl", user="t1/u", password="pw", will=("s/us", "400,x,gone"),
                        keepalive=30)
    packet = mq.decode_packet(raw[0], raw[2:])
    assert packet == mq.Connect(
        protocol_name="MQTT", protocol_level=4, clean_session=True, keepalive=30,
        client_id="d:gw-01:tpl", will=mq.Will("s/us", b"400,x,gone", 1, False),
        username="t1/u", password=b"pw",
    )


def test_publish_qos1_and_qos0() -> None:
    body = b"\x00\x04s/us\x00\x07500"
    assert mq.decode_packet(0x32, body) == mq.Publish("s/us", b"500", 1, False, False, 7)
    assert mq.decode_packet(0x30, b"\x00\x04s/us500") == mq.Publish(
        "s/us", b"500", 0, False, False, None
    )


@pytest.mark.parametrize(("first", "body", "message"), [
    (0x36, b"\x00\x04s/us\x00\x01x", "QoS 3"),
    (0x30, b"\x00\x04s/#x", "wildcard"),
    (0x30, b"\x00\x09s/us", "past the end"),
    (0x30, b"\x00\x02\xff\xfe", "not UTF-8"),
    (0x80, b"\x00\x01\x00\x04s/ds\x01", "reserved flags"),
    (0x82, b"\x00\x01", "without a topic filter"),
    (0x82, b"\x00\x01\x00\x04s/ds\x03", "above 2"),
    (0x10, b"\x00\x04MQTT\x04\x03\x00\x3c\x00\x00", "reserved flag"),
    (0x20, b"\x00\x00", "unexpected packet type 2"),
    (0x40, b"\x00", "too short"),
])
def test_malformed_packets_are_refused(first: int, body: bytes, message: str) -> None:
    with pytest.raises(mq.MalformedPacketError, match=message):
        mq.decode_packet(first, body)


def test_outgoing_packets_are_exact() -> None:
    assert mq.connack(4) == b"\x20\x02\x00\x04"
    assert mq.publish("s/e", b"40,999,x", 0) == b"\x30\x0d\x00\x03s/e40,999,x"
    assert mq.publish("s/ds", b"510,a", 1, 9) == b"\x32\x0d\x00\x04s/ds\x00\x09510,a"
    assert mq.ack(mq.PUBACK, 258) == b"\x40\x02\x01\x02"
    assert mq.ack(mq.PUBREL, 1) == b"\x62\x02\x00\x01"
    assert mq.suback(5, [1, 0x80]) == b"\x90\x04\x00\x05\x01\x80"
    assert mq.unsuback(5) == b"\xb0\x02\x00\x05"
    assert mq.PINGRESP_BYTES == b"\xd0\x00"


@pytest.mark.parametrize(("topic_filter", "topic", "matches"), [
    ("s/ds", "s/ds", True), ("s/ds", "s/dsx", False), ("s/+", "s/ds", True),
    ("s/#", "s/us/child", True), ("#", "s/e", True), ("s/+", "s/us/child", False),
    ("s/us/+", "s/us", False), ("s/us/#", "s/us", True),
])
def test_topic_matching(topic_filter: str, topic: str, matches: bool) -> None:
    assert mq.topic_matches(topic_filter, topic) is matches
