"""Frames -> Sightings (pure, the hot path): did a device just join the network?

A button press wakes the device, which joins the LAN with DHCP DISCOVER/REQUEST, ARP (probe,
gratuitous, request for the gateway) or, IPv6-only, a router or neighbour solicitation. This module
turns one Ethernet frame into a `Sighting` of such a packet, or `None` for everything else.

Hand-written index arithmetic on `bytes` instead of a packet library: on a busy LAN 98 % of the
frames are ordinary traffic that must be rejected in a few byte comparisons, and a general parser
(scapy, dpkt) builds objects for every frame first. Malformed frames (short headers, bad option
lengths, a missing DHCP magic cookie) give `None` and are counted; nothing here raises on input.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable
from typing import NamedTuple

from dashkanban.values import DETECT, Detect

# EtherTypes
ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))  # 802.1Q C-tag, 802.1ad S-tag, old QinQ

MAX_TAGS = 4  # more stacked VLAN tags than this is a hostile frame, not a LAN
DHCP_SERVER_PORT = 67
DHCP_MAGIC = b"\x63\x82\x53\x63"  # RFC 2131 section 3
DHCP_DISCOVER = 1
DHCP_REQUEST = 3
BOOTREQUEST = 1
ICMPV6 = 58
ND_ROUTER_SOLICIT = 133
ND_NEIGHBOR_SOLICIT = 135
ND_OPT_SOURCE_LINKADDR = 1  # RFC 4861 section 4.6.1

TRIGGERS: tuple[Detect, ...] = DETECT  # what the decoder recognises

_ZERO_MAC = b"\x00" * 6
_ZERO_IP6 = b"\x00" * 16
# Bytes 12-21 of an untagged Ethernet/IPv4 ARP request: EtherType 0x0806, htype 1, ptype 0x0800,
# hlen 6, plen 4, oper 1. The frame a flood of other devices is made of (`Decoder.sight`).
_ARP_REQUEST = b"\x08\x06\x00\x01\x08\x00\x06\x04\x00\x01"


class Sighting(NamedTuple):
    """One packet by which a device announced itself on the network.

    A NamedTuple, like Frame, rather than a frozen dataclass: the decoder makes one for every
    ARP request on the LAN when the button list is not in the kernel filter, and a frozen
    dataclass's __init__ (one object.__setattr__ a field) cost about 2 µs of the 3.3 µs a frame
    took to decode and match; a NamedTuple is as immutable and typed, at a third of that.
    """

    mac: str  # the device's MAC, "aa:bb:cc:dd:ee:ff" (DHCP chaddr, ARP sender, NDP source option)
    trigger: Detect
    time: float  # epoch seconds of the packet
    vlan: int | None  # 802.1Q VLAN id (the innermost tag), None when untagged
    ip: str | None  # the address it has or asks for, when the packet says
    hostname: str | None = None  # DHCP option 12
    vendor_class: str | None = None  # DHCP option 60


def _mac(raw: bytes) -> str:
    return raw.hex(":")


def _ipv4(raw: bytes) -> str:
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"


def _text(raw: bytes) -> str | None:
    """An option's bytes as printable text; hostile bytes are replaced, never raised on."""
    text = raw.rstrip(b"\x00").decode("utf-8", "replace")
    cleaned = "".join(ch if ch.isprintable() else "\ufffd" for ch in text).strip()
    return cleaned or None


class Decoder:
    """Turns frames into sightings for the active detection methods, counting as it goes.

    `frames` counts every frame given, `candidates` those of a watched kind (ARP, UDP to port 67,
    ICMPv6 router/neighbour solicitation: what the live kernel filter lets through), `sightings`
    the candidates that are a device joining (also those `sight` builds no Sighting for: the
    summary counts what was on the wire), `malformed` frames too broken to read.
    """

    __slots__ = ("_arp", "_dhcp", "_ndp", "candidates", "frames", "malformed", "sightings")

    def __init__(self, detect: Iterable[str] = ("arp", "dhcp")) -> None:
        methods = frozenset(detect)
        unknown = methods - frozenset(TRIGGERS)
        if unknown:
            raise ValueError(f"unknown detection methods: {', '.join(sorted(unknown))}")
        self._arp = "arp" in methods
        self._dhcp = "dhcp" in methods
        self._ndp = "ndp" in methods
        self.frames = 0
        self.candidates = 0
        self.sightings = 0
        self.malformed = 0

    def sight(
        self, frame: bytes, timestamp: float, vlan: int | None, wanted: Container[bytes]
    ) -> Sighting | None:
        """`decode`, matching first: a Sighting only for a device whose MAC (6 raw bytes, as in
        the frame) is in `wanted`; every other device's sighting is counted as decode counts it,
        and nothing is built for it.

        Behind the candidate filter every ARP request on the LAN arrives here, and formatting
        its MAC and IP as text and making a Sighting, only for the registry to say it is no
        button, was most of a frame's cost. The untagged ARP request, what such a flood is made
        of, is settled in place with one comparison of its header; every other frame goes
        through `decode`, which checks `wanted` before it formats anything."""
        if self._arp and frame[12:22] == _ARP_REQUEST and len(frame) >= 42:
            sha = frame[22:28]
            if sha not in wanted:
                # As _arp_packet counts an ARP request (oper 1 needs no IP check).
                self.frames += 1
                self.candidates += 1
                if sha == _ZERO_MAC or sha[0] & 1:
                    self.malformed += 1
                else:
                    self.sightings += 1
                return None
        return self.decode(frame, timestamp, vlan, wanted)

    def decode(
        self,
        frame: bytes,
        timestamp: float,
        vlan: int | None = None,
        wanted: Container[bytes] | None = None,
    ) -> Sighting | None:
        """One Ethernet frame -> a Sighting, or None. `vlan` is a tag the kernel stripped;
        `wanted`, when given, the devices (raw MACs) to make a Sighting for (`sight`)."""
        self.frames += 1
        n = len(frame)
        if n < 14:
            self.malformed += 1
            return None
        etype = (frame[12] << 8) | frame[13]
        off = 14
        if etype in VLAN_TPIDS:
            tags = 0
            while etype in VLAN_TPIDS:
                tags += 1
                if n < off + 4 or tags > MAX_TAGS:
                    self.malformed += 1
                    return None
                # The innermost tag is the device's VLAN (QinQ's outer one is the carrier's).
                vlan = ((frame[off] << 8) | frame[off + 1]) & 0x0FFF
                etype = (frame[off + 2] << 8) | frame[off + 3]
                off += 4
        if etype == ETH_IPV4:
            if not self._dhcp:
                return None
            return self._ipv4(frame, n, off, timestamp, vlan, wanted)
        if etype == ETH_ARP:
            if not self._arp:
                return None
            return self._arp_packet(frame, n, off, timestamp, vlan, wanted)
        if etype == ETH_IPV6:
            if not self._ndp:
                return None
            return self._ipv6(frame, n, off, timestamp, vlan, wanted)
        return None

    # -- ARP ------------------------------------------------------------------------------------

    def _arp_packet(
        self,
        frame: bytes,
        n: int,
        off: int,
        timestamp: float,
        vlan: int | None,
        wanted: Container[bytes] | None,
    ) -> Sighting | None:
        self.candidates += 1
        if n < off + 28:
            self.malformed += 1
            return None
        # Ethernet/IPv4 ARP only: htype 1, ptype 0x0800, hlen 6, plen 4.
        if frame[off : off + 6] != b"\x00\x01\x08\x00\x06\x04":
            return None
        oper = (frame[off + 6] << 8) | frame[off + 7]
        sha = frame[off + 8 : off + 14]
        spa = frame[off + 14 : off + 18]
        tpa = frame[off + 24 : off + 28]
        if oper != 1 and not (oper == 2 and spa == tpa):
            # A reply answers someone else's question: the device was awake already. A gratuitous
            # "reply" (sender IP = target IP) is an announcement, which some stacks send on joining.
            return None
        if sha == _ZERO_MAC or sha[0] & 1:
            self.malformed += 1  # a sender that is no unicast station
            return None
        if wanted is not None and sha not in wanted:
            self.sightings += 1  # a device joining, not one asked for: counted, not built
            return None
        ip = _ipv4(spa) if spa != b"\x00\x00\x00\x00" else _ipv4(tpa)  # a probe asks for tpa
        self.sightings += 1
        return Sighting(_mac(sha), "arp", timestamp, vlan, ip)

    # -- IPv4 / DHCP ----------------------------------------------------------------------------

    def _ipv4(
        self,
        frame: bytes,
        n: int,
        off: int,
        timestamp: float,
        vlan: int | None,
        wanted: Container[bytes] | None,
    ) -> Sighting | None:
        if n < off + 20:
            self.malformed += 1
            return None
        if frame[off + 9] != 17:  # not UDP: the common case, rejected first
            return None
        ihl = (frame[off] & 0x0F) * 4
        if frame[off] >> 4 != 4 or ihl < 20:
            self.malformed += 1
            return None
        if ((frame[off + 6] << 8) | frame[off + 7]) & 0x1FFF:
            return None  # a later fragment carries no UDP header
        u = off + ihl
        if n < u + 8:
            self.malformed += 1
            return None
        if frame[u + 2] != 0 or frame[u + 3] != DHCP_SERVER_PORT:
            return None
        self.candidates += 1
        total = (frame[off + 2] << 8) | frame[off + 3]
        end = min(n, off + total)  # Ethernet pads short frames; the IP length says where data ends
        b = u + 8
        if end < b + 240:
            self.malformed += 1
            return None
        if frame[b] != BOOTREQUEST:
            return None  # a server's reply to a relay (also sent to port 67)
        if frame[b + 1] != 1 or frame[b + 2] != 6:
            return None  # not an Ethernet client
        if frame[b + 236 : b + 240] != DHCP_MAGIC:
            self.malformed += 1
            return None
        chaddr = frame[b + 28 : b + 34]
        if chaddr == _ZERO_MAC or chaddr[0] & 1:
            self.malformed += 1
            return None
        msg_type = 0
        hostname: bytes | None = None  # raw until the device is known to be wanted
        vendor_class: bytes | None = None
        requested: bytes | None = None
        p = b + 240
        while p < end:
            code = frame[p]
            if code == 255:
                break
            if code == 0:
                p += 1
                continue
            if p + 2 > end:
                self.malformed += 1
                return None
            length = frame[p + 1]
            q = p + 2 + length
            if q > end:
                self.malformed += 1
                return None
            if code == 53:
                if length != 1:
                    self.malformed += 1
                    return None
                msg_type = frame[p + 2]
            elif code == 12:
                hostname = frame[p + 2 : q]
            elif code == 60:
                vendor_class = frame[p + 2 : q]
            elif code == 50 and length == 4:
                requested = frame[p + 2 : q]
            p = q
        if msg_type != DHCP_DISCOVER and msg_type != DHCP_REQUEST:
            return None  # DECLINE, RELEASE, INFORM or plain BOOTP: no device waking up
        if wanted is not None and chaddr not in wanted:
            self.sightings += 1
            return None
        ciaddr = frame[b + 12 : b + 16]
        if requested is not None and requested != b"\x00\x00\x00\x00":
            ip: str | None = _ipv4(requested)
        elif ciaddr != b"\x00\x00\x00\x00":
            ip = _ipv4(ciaddr)
        else:
            ip = None
        self.sightings += 1
        # The client is chaddr, not the Ethernet source: a relay agent rewrites the latter.
        return Sighting(
            _mac(chaddr), "dhcp", timestamp, vlan, ip,
            None if hostname is None else _text(hostname),
            None if vendor_class is None else _text(vendor_class),
        )

    # -- IPv6 / NDP -----------------------------------------------------------------------------

    def _ipv6(
        self,
        frame: bytes,
        n: int,
        off: int,
        timestamp: float,
        vlan: int | None,
        wanted: Container[bytes] | None,
    ) -> Sighting | None:
        if n < off + 40:
            self.malformed += 1
            return None
        if frame[off + 6] != ICMPV6:
            return None
        i = off + 40
        if n < i + 1:
            return None
        kind = frame[i]
        if kind == ND_ROUTER_SOLICIT:
            opts = i + 8
        elif kind == ND_NEIGHBOR_SOLICIT:
            opts = i + 24
        else:
            return None
        self.candidates += 1
        if frame[off] >> 4 != 6:
            self.malformed += 1
            return None
        end = min(n, i + ((frame[off + 4] << 8) | frame[off + 5]))
        if end < opts:
            self.malformed += 1
            return None
        src = frame[off + 8 : off + 24]
        mac: bytes | None = None
        p = opts
        while p + 2 <= end:
            units = frame[p + 1]
            if units == 0:  # RFC 4861 4.6: a zero length must be discarded (else an endless loop)
                self.malformed += 1
                return None
            q = p + units * 8
            if q > end:
                self.malformed += 1
                return None
            if frame[p] == ND_OPT_SOURCE_LINKADDR and units == 1:
                mac = frame[p + 2 : p + 8]
            p = q
        if mac is None:
            if src != _ZERO_IP6 or kind != ND_NEIGHBOR_SOLICIT:
                return None
            # Duplicate address detection (RFC 4862 5.4.2): source "::" may not carry the option,
            # so the Ethernet source is the only name the device gives.
            mac = frame[6:12]
        if mac == _ZERO_MAC or mac[0] & 1:
            self.malformed += 1
            return None
        if wanted is not None and mac not in wanted:
            self.sightings += 1
            return None
        if src != _ZERO_IP6:
            ip: str | None = str(ipaddress.IPv6Address(src))
        elif kind == ND_NEIGHBOR_SOLICIT:
            ip = str(ipaddress.IPv6Address(frame[i + 8 : i + 24]))  # the address being claimed
        else:
            ip = None
        self.sightings += 1
        return Sighting(_mac(mac), "ndp", timestamp, vlan, ip)
