"""decode: frames -> Sightings. Fixtures are real frame bytes, written out field by field, and
frames built independently by scapy; hypothesis feeds random and mutated frames."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashkanban.detect.decode import Decoder, Sighting
from tests import forge

T = 1764144001.234

# The DHCP DISCOVER of Wireshark's sample dhcp.pcap (client 00:0b:82:01:fc:42), byte for byte.
WIRESHARK_DISCOVER = bytes.fromhex(
    "ffffffffffff000b8201fc420800"  # Ethernet: broadcast <- 00:0b:82:01:fc:42, IPv4
    "450001480445000080110000000000"  # IPv4: len 328, UDP, 0.0.0.0 ->
    "00ffffffff"  # 255.255.255.255
    "004400430134b2a5"  # UDP 68 -> 67, length 308
    "0101060000003d1d0000000000000000000000000000000000000000"  # BOOTREQUEST, xid 0x3d1d
    "000b8201fc4200000000000000000000"  # chaddr
    + "00" * 192  # sname, file
    + "63825363"  # magic cookie
    "350101"  # option 53: DISCOVER
    "3d0701000b8201fc42"  # option 61: client identifier
    "32040000000037040103062aff"  # option 50: 0.0.0.0, option 55, end
    + "00" * 35  # pad to the 300 bytes of a BOOTP message
)

# An ARP probe as a Dash button sends it on waking (sender IP 0.0.0.0), padded to 60 bytes.
ARP_PROBE = bytes.fromhex(
    "ffffffffffff" "ac63be123456" "0806"
    "0001" "0800" "06" "04" "0001"  # Ethernet/IPv4, request
    "ac63be123456" "00000000"  # sender: the button, no address yet
    "000000000000" "c0a80a33"  # target: 192.168.10.51, the address it wants
    + "00" * 18
)

# A gateway's ARP reply: never a press.
ARP_REPLY = bytes.fromhex(
    "ac63be123456" "000db94a1001" "0806" "0001080006040002"
    "000db94a1001" "c0a80a01" "ac63be123456" "c0a80a33" + "00" * 18
)


def decode(frame: bytes, *, detect: tuple[str, ...] = ("arp", "dhcp", "ndp"),
           vlan: int | None = None) -> tuple[Sighting | None, Decoder]:
    decoder = Decoder(detect)
    return decoder.decode(frame, T, vlan), decoder


def counters(decoder: Decoder) -> tuple[int, int, int, int]:
    return decoder.frames, decoder.candidates, decoder.sightings, decoder.malformed


# ---------------------------------------------------------------------------------------------
# DHCP


def test_wireshark_discover() -> None:
    sighting, decoder = decode(WIRESHARK_DISCOVER)
    assert sighting == Sighting("00:0b:82:01:fc:42", "dhcp", T, None, None)
    assert counters(decoder) == (1, 1, 1, 0)


def test_discover_with_hostname_vendor_class_and_requested_address() -> None:
    frame = forge.dhcp_client_frame(
        "ac:63:be:12:34:56", forge.REQUEST, requested_ip="192.168.10.51",
        hostname="dash-kitchen", vendor_class="AmazonDash",
    )
    sighting, _ = decode(frame)
    assert sighting == Sighting(
        "ac:63:be:12:34:56", "dhcp", T, None, "192.168.10.51", "dash-kitchen", "AmazonDash"
    )


def test_relayed_request_counts_for_the_client_not_the_relay() -> None:
    message = forge.dhcp(1, "68:54:fd:01:02:03", forge.REQUEST, giaddr="192.168.30.1", hops=1,
                         requested_ip="192.168.30.44")
    frame = forge.udp_frame("00:1b:21:aa:bb:cc", "00:0d:b9:4a:10:02", "192.168.30.1",
                            "192.168.10.2", 67, 67, message)
    sighting, _ = decode(frame)
    assert sighting == Sighting("68:54:fd:01:02:03", "dhcp", T, None, "192.168.30.44")


@pytest.mark.parametrize("kind", [forge.OFFER, forge.ACK, forge.NAK])
def test_server_replies_are_no_sighting(kind: int) -> None:
    reply = forge.dhcp(2, "ac:63:be:12:34:56", kind, yiaddr="192.168.10.51")
    to_client = forge.udp_frame("00:0d:b9:4a:10:02", "ac:63:be:12:34:56", "192.168.10.2",
                                "192.168.10.51", 67, 68, reply)
    to_relay = forge.udp_frame("00:0d:b9:4a:10:02", "00:1b:21:aa:bb:cc", "192.168.10.2",
                               "192.168.30.1", 67, 67, reply)
    assert decode(to_client)[0] is None
    sighting, decoder = decode(to_relay)  # port 67: a candidate, but a reply
    assert sighting is None
    assert counters(decoder) == (1, 1, 0, 0)


@pytest.mark.parametrize("kind", [forge.DECLINE, forge.RELEASE, forge.INFORM, None])
def test_other_client_messages_are_no_sighting(kind: int | None) -> None:
    payload = forge.dhcp(1, "ac:63:be:12:34:56", kind)
    frame = forge.udp_frame("ac:63:be:12:34:56", forge.BROADCAST, "0.0.0.0", "255.255.255.255",
                            68, 67, payload)
    sighting, decoder = decode(frame)
    assert sighting is None
    assert counters(decoder) == (1, 1, 0, 0)


def test_dhcp_only_when_detected() -> None:
    frame = forge.dhcp_client_frame("ac:63:be:12:34:56", forge.DISCOVER)
    sighting, decoder = decode(frame, detect=("arp",))
    assert sighting is None
    assert counters(decoder) == (1, 0, 0, 0)


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("no magic cookie", lambda m: m[:236] + b"\x00\x00\x00\x00" + m[240:]),
        ("option overruns", lambda m: m[:240] + b"\x35\x01\x01\x0c\x50ab"),
        ("option 53 of length 2", lambda m: m[:240] + b"\x35\x02\x01\x01\xff"),
        ("cut before the cookie", lambda m: m[:200]),
        ("length byte missing", lambda m: m[:240] + b"\x35"),
        ("multicast chaddr", lambda m: m[:28] + b"\x01" + m[29:]),
    ],
)
def test_malformed_dhcp_is_counted(name: str, mutate: object) -> None:
    message = forge.dhcp(1, "ac:63:be:12:34:56", forge.DISCOVER)
    broken = mutate(message)  # type: ignore[operator]
    frame = forge.udp_frame("ac:63:be:12:34:56", forge.BROADCAST, "0.0.0.0", "255.255.255.255",
                            68, 67, broken)
    sighting, decoder = decode(frame)
    assert sighting is None, name
    assert counters(decoder) == (1, 1, 0, 1), name


def test_ip_length_bounds_the_options() -> None:
    """Ethernet padding after the IP packet is not read as DHCP options."""
    message = forge.dhcp(1, "ac:63:be:12:34:56", forge.DISCOVER)[:-1]  # no end option
    frame = forge.udp_frame("ac:63:be:12:34:56", forge.BROADCAST, "0.0.0.0", "255.255.255.255",
                            68, 67, message)
    sighting, decoder = decode(frame + b"\x0c\x05junk")
    assert sighting is not None
    assert sighting.hostname is None
    assert decoder.malformed == 0


def test_hostile_hostname_is_cleaned() -> None:
    frame = forge.dhcp_client_frame("ac:63:be:12:34:56", forge.DISCOVER,
                                    extra_options=b"\x0c\x06ab\x00\n\xffz")
    sighting, _ = decode(frame)
    assert sighting is not None
    assert sighting.hostname == "ab\ufffd\ufffd\ufffdz"


def test_later_fragment_is_ignored() -> None:
    frame = bytearray(forge.dhcp_client_frame("ac:63:be:12:34:56", forge.DISCOVER))
    frame[20:22] = struct.pack("!H", 0x2000 | 185)  # more fragments, offset 185*8
    sighting, decoder = decode(bytes(frame))
    assert sighting is None
    assert counters(decoder) == (1, 0, 0, 0)


# ---------------------------------------------------------------------------------------------
# ARP


def test_arp_probe() -> None:
    sighting, decoder = decode(ARP_PROBE)
    assert sighting == Sighting("ac:63:be:12:34:56", "arp", T, None, "192.168.10.51")
    assert counters(decoder) == (1, 1, 1, 0)


def test_arp_request_and_gratuitous() -> None:
    who_has = forge.arp_frame(1, "ac:63:be:12:34:56", "192.168.10.51", "192.168.10.1")
    gratuitous = forge.arp_frame(1, "ac:63:be:12:34:56", "192.168.10.51", "192.168.10.51")
    gratuitous_reply = forge.arp_frame(2, "ac:63:be:12:34:56", "192.168.10.51", "192.168.10.51")
    for frame in (who_has, gratuitous, gratuitous_reply):
        assert decode(frame)[0] == Sighting("ac:63:be:12:34:56", "arp", T, None, "192.168.10.51")


def test_arp_reply_is_no_sighting() -> None:
    sighting, decoder = decode(ARP_REPLY)
    assert sighting is None
    assert counters(decoder) == (1, 1, 0, 0)


def test_arp_sender_not_ethernet_source() -> None:
    """The sender hardware address names the device (a bridge may rewrite the source)."""
    frame = forge.arp_frame(1, "ac:63:be:12:34:56", "0.0.0.0", "10.0.0.9", src="00:1b:21:aa:bb:cc")
    assert decode(frame)[0] == Sighting("ac:63:be:12:34:56", "arp", T, None, "10.0.0.9")


def test_short_arp_is_malformed() -> None:
    sighting, decoder = decode(ARP_PROBE[:30])
    assert sighting is None
    assert counters(decoder) == (1, 1, 0, 1)


# ---------------------------------------------------------------------------------------------
# VLANs


def test_vlan_tag_in_the_frame() -> None:
    frame = forge.arp_frame(1, "fc:a6:67:0a:0b:0c", "0.0.0.0", "192.168.20.17", vlans=(20,))
    assert frame[12:16] == b"\x81\x00\x00\x14"
    assert decode(frame)[0] == Sighting("fc:a6:67:0a:0b:0c", "arp", T, 20, "192.168.20.17")


def test_qinq_reports_the_inner_vlan() -> None:
    frame = forge.dhcp_client_frame("fc:a6:67:0a:0b:0c", forge.DISCOVER, vlans=(300, 20))
    assert frame[12:14] == b"\x88\xa8"
    assert frame[16:18] == b"\x81\x00"
    assert decode(frame)[0] == Sighting("fc:a6:67:0a:0b:0c", "dhcp", T, 20, None)


def test_vlan_from_the_kernel() -> None:
    frame = forge.arp_frame(1, "fc:a6:67:0a:0b:0c", "0.0.0.0", "192.168.20.17")
    assert decode(frame, vlan=20)[0] == Sighting(
        "fc:a6:67:0a:0b:0c", "arp", T, 20, "192.168.20.17"
    )


def test_too_many_tags_is_malformed() -> None:
    tags = b"\x81\x00\x00\x01" * 6
    frame = forge.arp_frame(1, "fc:a6:67:0a:0b:0c", "0.0.0.0", "192.168.20.17")
    frame = frame[:12] + tags + frame[12:]
    sighting, decoder = decode(frame)
    assert sighting is None
    assert decoder.malformed == 1


# ---------------------------------------------------------------------------------------------
# NDP


def test_router_solicitation() -> None:
    frame = forge.ndp_frame(133, "ac:63:be:12:34:56", "fe80::ae63:beff:fe12:3456")
    assert decode(frame)[0] == Sighting(
        "ac:63:be:12:34:56", "ndp", T, None, "fe80::ae63:beff:fe12:3456"
    )
    assert decode(frame, detect=("arp", "dhcp"))[0] is None


def test_neighbour_solicitation_and_dad() -> None:
    ns = forge.ndp_frame(135, "ac:63:be:12:34:56", "fe80::1:2", target="fe80::99")
    assert decode(ns)[0] == Sighting("ac:63:be:12:34:56", "ndp", T, None, "fe80::1:2")
    dad = forge.ndp_frame(135, "ac:63:be:12:34:56", "::", target="fe80::1:2", with_option=False)
    assert decode(dad)[0] == Sighting("ac:63:be:12:34:56", "ndp", T, None, "fe80::1:2")


def test_ndp_zero_length_option_is_malformed() -> None:
    frame = bytearray(forge.ndp_frame(133, "ac:63:be:12:34:56", "fe80::1"))
    frame[14 + 40 + 8 + 1] = 0
    sighting, decoder = decode(bytes(frame))
    assert sighting is None
    assert counters(decoder) == (1, 1, 0, 1)


# ---------------------------------------------------------------------------------------------
# Ordinary traffic and broken frames


def test_ordinary_traffic_is_not_a_candidate() -> None:
    frames = [
        forge.tcp_frame("3c:22:fb:8e:41:07", "00:0d:b9:4a:10:01", "192.168.10.31", "1.2.3.4",
                        50000, 443),
        forge.udp_frame("3c:22:fb:8e:41:07", "00:0d:b9:4a:10:01", "192.168.10.31", "1.1.1.1",
                        50000, 53, b"x" * 30),
        forge.ethernet("ff:ff:ff:ff:ff:ff", "3c:22:fb:8e:41:07", 0x88CC, b"lldp"),
    ]
    decoder = Decoder(("arp", "dhcp", "ndp"))
    assert [decoder.decode(f, T) for f in frames] == [None, None, None]
    assert counters(decoder) == (3, 0, 0, 0)


def test_short_frames_are_malformed() -> None:
    decoder = Decoder()
    for frame in (b"", b"\xff" * 13, b"\xff" * 12 + b"\x08\x00" + b"\x45" * 10):
        assert decoder.decode(frame, T) is None
    assert counters(decoder) == (3, 0, 0, 3)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown detection methods: mdns"):
        Decoder(("arp", "mdns"))


# ---------------------------------------------------------------------------------------------
# Independent frames: scapy builds them, we decode them


def test_frames_built_by_scapy() -> None:
    scapy = pytest.importorskip("scapy.all")
    mac = "ac:63:be:12:34:56"
    dhcp = (
        scapy.Ether(src="00:1b:21:aa:bb:cc", dst="ff:ff:ff:ff:ff:ff")
        / scapy.Dot1Q(vlan=7)
        / scapy.IP(src="192.168.30.1", dst="192.168.10.2")
        / scapy.UDP(sport=67, dport=67)
        / scapy.BOOTP(op=1, chaddr=bytes.fromhex("ac63be123456"), giaddr="192.168.30.1")
        / scapy.DHCP(options=[("message-type", "request"), ("hostname", b"dash"),
                              ("vendor_class_id", b"AmazonDash"),
                              ("requested_addr", "192.168.30.9"), "end"])
    )
    arp = scapy.Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / scapy.ARP(
        op=1, hwsrc=mac, psrc="0.0.0.0", pdst="10.1.2.3"
    )
    rs = (
        scapy.Ether(src=mac, dst="33:33:00:00:00:02")
        / scapy.IPv6(src="fe80::1", dst="ff02::2")
        / scapy.ICMPv6ND_RS()
        / scapy.ICMPv6NDOptSrcLLAddr(lladdr=mac)
    )
    assert decode(bytes(dhcp))[0] == Sighting(mac, "dhcp", T, 7, "192.168.30.9", "dash",
                                              "AmazonDash")
    assert decode(bytes(arp))[0] == Sighting(mac, "arp", T, None, "10.1.2.3")
    assert decode(bytes(rs))[0] == Sighting(mac, "ndp", T, None, "fe80::1")


# ---------------------------------------------------------------------------------------------
# Property tests: never raise, counters stay consistent

VALID = [
    WIRESHARK_DISCOVER,
    ARP_PROBE,
    forge.dhcp_client_frame("ac:63:be:12:34:56", forge.REQUEST, hostname="h", vlans=(5,)),
    forge.ndp_frame(135, "ac:63:be:12:34:56", "fe80::1", target="fe80::2"),
    forge.ndp_frame(133, "ac:63:be:12:34:56", "fe80::1", vlans=(9, 10)),
]


def _check(decoder: Decoder, frame: bytes) -> None:
    before = counters(decoder)
    result = decoder.decode(frame, T)
    frames, candidates, sightings, malformed = counters(decoder)
    assert frames == before[0] + 1
    assert sightings == before[2] + (result is not None)
    assert malformed - before[3] in (0, 1)
    assert result is None or (candidates == before[1] + 1 and malformed == before[3])
    if result is not None:
        assert result.trigger in ("arp", "dhcp", "ndp")
        assert len(result.mac) == 17


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(frame: bytes) -> None:
    _check(Decoder(("arp", "dhcp", "ndp")), frame)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=8),
    st.integers(0, 600),
)
def test_mutated_frames_never_raise(base: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    frame = bytearray(base)
    for index, value in flips:
        if index < len(frame):
            frame[index] = value
    _check(Decoder(("arp", "dhcp", "ndp")), bytes(frame[:cut]))
