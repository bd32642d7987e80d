"""Builds real frame bytes and writes pcap/pcapng files: for the bundled sample capture
(scripts/make_sample_capture.py), the benchmarks and the tests. Test tooling: it lives in tests/,
not in the wheel. Checksums are computed, so Wireshark and tcpdump read the results as
ordinary traffic.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

BROADCAST = "ff:ff:ff:ff:ff:ff"


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", "").replace("-", ""))


def ip4(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


def ip6(text: str) -> bytes:
    import ipaddress

    return ipaddress.IPv6Address(text).packed


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(
    dst: str, src: str, ethertype: int, payload: bytes, vlans: Sequence[int] = ()
) -> bytes:
    """An Ethernet II frame; `vlans` outermost first (two = QinQ, outer 802.1ad S-tag)."""
    tags = b""
    for index, vlan in enumerate(vlans):
        tpid = 0x88A8 if len(vlans) > 1 and index == 0 else 0x8100
        tags += struct.pack("!HH", tpid, vlan & 0x0FFF)
    frame = mac_bytes(dst) + mac_bytes(src) + tags + struct.pack("!H", ethertype) + payload
    return frame + b"\x00" * max(0, 60 - len(frame))  # the minimum frame size, as a NIC pads


def arp(oper: int, sha: str, spa: str, tha: str, tpa: str) -> bytes:
    return (
        struct.pack("!HHBBH", 1, 0x0800, 6, 4, oper)
        + mac_bytes(sha)
        + ip4(spa)
        + mac_bytes(tha)
        + ip4(tpa)
    )


def arp_frame(
    oper: int,
    sha: str,
    spa: str,
    tpa: str,
    *,
    tha: str = "00:00:00:00:00:00",
    dst: str = BROADCAST,
    src: str | None = None,
    vlans: Sequence[int] = (),
) -> bytes:
    return ethernet(dst, src or sha, 0x0806, arp(oper, sha, spa, tha, tpa), vlans)


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 0, ttl: int = 64) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, ttl, proto, 0, ip4(src),
        ip4(dst),
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    length = 8 + len(payload)
    pseudo = ip4(src) + ip4(dst) + struct.pack("!BBH", 0, 17, length)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(pseudo + header + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, csum) + payload


def tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
        payload: bytes = b"") -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0)
    pseudo = ip4(src) + ip4(dst) + struct.pack("!BBH", 0, 6, len(header) + len(payload))
    csum = checksum(pseudo + header + payload)
    return header[:16] + struct.pack("!H", csum) + header[18:] + payload


def udp_frame(
    src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int, payload: bytes,
    *, vlans: Sequence[int] = (), ident: int = 0,
) -> bytes:
    packet = ipv4(src, dst, 17, udp(src, dst, sport, dport, payload), ident=ident)
    return ethernet(dst_mac, src_mac, 0x0800, packet, vlans)


def tcp_frame(
    src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int, *, seq: int = 1,
    ack: int = 0, flags: int = 0x18, payload: bytes = b"", vlans: Sequence[int] = (),
    ident: int = 0,
) -> bytes:
    segment = tcp(src, dst, sport, dport, seq, ack, flags, payload)
    return ethernet(dst_mac, src_mac, 0x0800, ipv4(src, dst, 6, segment, ident=ident), vlans)


DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)


def dhcp(
    op: int,
    chaddr: str,
    msg_type: int | None,
    *,
    xid: int = 0x3903F326,
    ciaddr: str = "0.0.0.0",
    yiaddr: str = "0.0.0.0",
    siaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    hops: int = 0,
    hostname: str | None = None,
    vendor_class: str | None = None,
    requested_ip: str | None = None,
    server_id: str | None = None,
    extra_options: bytes = b"",
    cookie: bytes = b"\x63\x82\x53\x63",
) -> bytes:
    """A BOOTP/DHCP message (RFC 2131), options in the order a typical client sends them."""
    fixed = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        op, 1, 6, hops, xid, 0, 0x8000 if op == 1 else 0, ip4(ciaddr), ip4(yiaddr), ip4(siaddr),
        ip4(giaddr), mac_bytes(chaddr), b"", b"",
    )
    options = b""
    if msg_type is not None:
        options += bytes((53, 1, msg_type))
    if server_id is not None:
        options += bytes((54, 4)) + ip4(server_id)
    if requested_ip is not None:
        options += bytes((50, 4)) + ip4(requested_ip)
    if hostname is not None:
        raw = hostname.encode()
        options += bytes((12, len(raw))) + raw
    if vendor_class is not None:
        raw = vendor_class.encode()
        options += bytes((60, len(raw))) + raw
    if op == 1:
        options += bytes((55, 4, 1, 3, 6, 15))  # parameter request list
    options += extra_options + b"\xff"
    return fixed + cookie + options


def dhcp_client_frame(
    chaddr: str, msg_type: int, *, vlans: Sequence[int] = (), **options: object
) -> bytes:
    """A client's broadcast DISCOVER/REQUEST: 0.0.0.0:68 -> 255.255.255.255:67."""
    payload = dhcp(1, chaddr, msg_type, **options)  # type: ignore[arg-type]
    return udp_frame(chaddr, BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67, payload, vlans=vlans)


def icmpv6(src: bytes, dst: bytes, body: bytes) -> bytes:
    pseudo = src + dst + struct.pack("!I3xB", len(body), 58)
    csum = checksum(pseudo + body)
    return body[:2] + struct.pack("!H", csum) + body[4:]


def ipv6(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 255) -> bytes:
    return (
        struct.pack("!IHBB", 0x60000000, len(payload), next_header, hop_limit)
        + ip6(src)
        + ip6(dst)
        + payload
    )


def ndp_frame(
    kind: int,
    mac: str,
    src: str,
    *,
    target: str | None = None,
    with_option: bool = True,
    vlans: Sequence[int] = (),
) -> bytes:
    """A router (133) or neighbour (135) solicitation with the source link-layer option."""
    option = bytes((1, 1)) + mac_bytes(mac) if with_option else b""
    if kind == 133:
        body = struct.pack("!BBHI", 133, 0, 0, 0) + option
        dst = "ff02::2"
        dst_mac = "33:33:00:00:00:02"
    else:
        tgt = ip6(target or src)
        body = struct.pack("!BBHI", 135, 0, 0, 0) + tgt + option
        dst = "ff02::1:ff" + f"{tgt[13]:02x}:{tgt[14]:02x}{tgt[15]:02x}"
        dst_mac = "33:33:ff:" + tgt[13:].hex(":")
    packet = ipv6(src, dst, 58, icmpv6(ip6(src), ip6(dst), body))
    return ethernet(dst_mac, mac, 0x86DD, packet, vlans)


# ---------------------------------------------------------------------------------------------
# Writing capture files


def write_pcap(
    target: BinaryIO, frames: Iterable[tuple[float, bytes]], *, nanoseconds: bool = False,
    big_endian: bool = False, linktype: int = 1,
) -> int:
    """Write a classic pcap file; returns the number of frames."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    units = 1_000_000_000 if nanoseconds else 1_000_000
    target.write(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype))
    record = struct.Struct(e + "IIII")
    count = 0
    for timestamp, data in frames:
        sec, frac = divmod(_ticks(timestamp, units), units)
        target.write(record.pack(sec, frac, len(data), len(data)))
        target.write(data)
        count += 1
    return count


def _ticks(timestamp: float, units: int) -> int:
    """Seconds -> ticks without the float error of `timestamp * 1e9` (1.7e18 > 2**53)."""
    seconds = int(timestamp)
    return seconds * units + round((timestamp - seconds) * units)


def _option(code: int, value: bytes, e: str) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def _block(btype: int, body: bytes, e: str) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


def pcapng_header(big_endian: bool = False) -> bytes:
    e = ">" if big_endian else "<"
    shb = struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(4, b"dashkanban", e)
    return _block(0x0A0D0D0A, shb + struct.pack(e + "HH", 0, 0), e)


def pcapng_interface(
    name: str, *, tsresol: int = 6, linktype: int = 1, big_endian: bool = False
) -> bytes:
    """An IDB; `tsresol` is the if_tsresol byte (6 = microseconds, 9 = nano, 0x80|n = 2^-n)."""
    e = ">" if big_endian else "<"
    body = struct.pack(e + "HHI", linktype, 0, 262144)
    body += _option(2, name.encode(), e) + _option(9, bytes((tsresol,)), e) + b"\x00" * 4
    return _block(1, body, e)


def pcapng_packet(
    interface: int, timestamp: float, data: bytes, *, tsresol: int = 6, big_endian: bool = False
) -> bytes:
    e = ">" if big_endian else "<"
    units = 2 ** (tsresol & 0x7F) if tsresol & 0x80 else 10**tsresol
    ticks = _ticks(timestamp, units)
    body = struct.pack(e + "IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
                       len(data)) + data
    return _block(6, body, e)


def pcapng_simple_packet(data: bytes, *, big_endian: bool = False) -> bytes:
    e = ">" if big_endian else "<"
    return _block(3, struct.pack(e + "I", len(data)) + data, e)


def write_pcapng(
    path: Path, frames: Iterable[tuple[float, bytes]], *, interface: str = "eth0",
    tsresol: int = 6,
) -> int:
    count = 0
    with path.open("wb") as f:
        f.write(pcapng_header())
        f.write(pcapng_interface(interface, tsresol=tsresol))
        for timestamp, data in frames:
            f.write(pcapng_packet(0, timestamp, data, tsresol=tsresol))
            count += 1
    return count
