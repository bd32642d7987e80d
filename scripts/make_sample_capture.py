#!/usr/bin/env python3
"""Write src/dashkanban/data/sample-store.pcapng: a real-looking morning in a store.

Deterministic (fixed seed, fixed times), so the file is reproducible byte for byte. The three
buttons of data/MACID.csv are pressed several times, including an Amazon-style second burst 17 s
after the first (one press), a button behind VLAN 20, and a button whose DHCP requests reach us
through a relay (Ethernet source = the relay). Phones and laptops chatter around them: DHCP with
server OFFER/ACK replies, ARP requests and replies, IPv6 neighbour discovery, mDNS, DNS and HTTPS.

    python scripts/make_sample_capture.py [OUTPUT]
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the frame forge is test tooling (tests/forge.py), not in the wheel

from tests import forge as f  # noqa: E402 - after the path above

OUT = ROOT / "src" / "dashkanban" / "data" / "sample-store.pcapng"
START = datetime(2026, 11, 26, 8, 0, 0, tzinfo=UTC).timestamp()

BUTTON_1 = "ac:63:be:12:34:56"
BUTTON_2 = "fc:a6:67:0a:0b:0c"
BUTTON_3 = "68:54:fd:01:02:03"
GATEWAY_MAC, GATEWAY_IP = "00:0d:b9:4a:10:01", "192.168.10.1"
DHCP_SERVER_MAC, DHCP_SERVER_IP = "00:0d:b9:4a:10:02", "192.168.10.2"
RELAY_MAC, RELAY_IP = "00:1b:21:aa:bb:cc", "192.168.30.1"  # router relaying for the back office
VLAN = 20

# Phones and laptops: (MAC, IP, DHCP hostname)
DEVICES = [
    ("3c:22:fb:8e:41:07", "192.168.10.31", "iPhone-Kasse"),
    ("f8:ff:c2:19:72:3a", "192.168.10.32", "MacBook-Filiale"),
    ("a4:83:e7:05:6b:e2", "192.168.10.33", "iPad-Lager"),
    ("9c:b6:d0:4f:2d:11", "192.168.10.34", "DESKTOP-7Q2LK4M"),
    ("00:e0:4c:68:01:9a", "192.168.10.35", "label-printer"),
    ("b8:27:eb:3d:52:c0", "192.168.10.36", "raspberrypi"),
]


class Capture:
    def __init__(self) -> None:
        self.frames: list[tuple[float, bytes]] = []
        self.ident = 0

    def add(self, seconds: float, frame: bytes) -> None:
        self.frames.append((START + seconds, frame))

    def next_ident(self) -> int:
        self.ident = (self.ident + 7919) & 0xFFFF
        return self.ident


def dhcp_exchange(
    cap: Capture, t: float, mac: str, ip: str, *, hostname: str | None = None,
    vendor: str | None = None, vlans: tuple[int, ...] = (), discover: bool = True,
    xid: int = 0,
) -> None:
    """A client's DISCOVER/OFFER/REQUEST/ACK (or REQUEST/ACK when renewing)."""
    opts: dict[str, object] = {"xid": xid, "hostname": hostname, "vendor_class": vendor}
    if discover:
        cap.add(t, f.dhcp_client_frame(mac, f.DISCOVER, vlans=vlans, **opts))
        offer = f.dhcp(2, mac, f.OFFER, xid=xid, yiaddr=ip, siaddr=DHCP_SERVER_IP,
                       server_id=DHCP_SERVER_IP)
        cap.add(t + 0.012, f.udp_frame(DHCP_SERVER_MAC, mac, DHCP_SERVER_IP, ip, 67, 68, offer,
                                       vlans=vlans, ident=cap.next_ident()))
        t += 0.31
    cap.add(t, f.dhcp_client_frame(mac, f.REQUEST, vlans=vlans, requested_ip=ip,
                                   server_id=DHCP_SERVER_IP if discover else None, **opts))
    ack = f.dhcp(2, mac, f.ACK, xid=xid, yiaddr=ip, siaddr=DHCP_SERVER_IP,
                 server_id=DHCP_SERVER_IP)
    cap.add(t + 0.009, f.udp_frame(DHCP_SERVER_MAC, mac, DHCP_SERVER_IP, ip, 67, 68, ack,
                                   vlans=vlans, ident=cap.next_ident()))


def arp_join(cap: Capture, t: float, mac: str, ip: str, vlans: tuple[int, ...] = ()) -> None:
    """Probe, gratuitous announcement, then who-has the gateway, answered by the gateway."""
    cap.add(t, f.arp_frame(1, mac, "0.0.0.0", ip, vlans=vlans))
    cap.add(t + 0.21, f.arp_frame(1, mac, ip, ip, vlans=vlans))
    cap.add(t + 0.43, f.arp_frame(1, mac, ip, GATEWAY_IP, vlans=vlans))
    cap.add(t + 0.431, f.arp_frame(2, GATEWAY_MAC, GATEWAY_IP, ip, tha=mac, dst=mac, vlans=vlans))


def relayed_request(cap: Capture, t: float, mac: str, ip: str, xid: int) -> None:
    """DISCOVER and REQUEST as the relay forwards them: relay MAC/IP outside, chaddr inside."""
    for offset, kind in ((0.0, f.DISCOVER), (0.35, f.REQUEST)):
        msg = f.dhcp(1, mac, kind, xid=xid, giaddr=RELAY_IP, hops=1,
                     requested_ip=ip if kind == f.REQUEST else None, vendor_class="AmazonDash")
        cap.add(t + offset, f.udp_frame(RELAY_MAC, DHCP_SERVER_MAC, RELAY_IP, DHCP_SERVER_IP,
                                        67, 67, msg, ident=cap.next_ident()))
        reply = f.dhcp(2, mac, f.OFFER if kind == f.DISCOVER else f.ACK, xid=xid, yiaddr=ip,
                       giaddr=RELAY_IP, hops=1, server_id=DHCP_SERVER_IP)
        cap.add(t + offset + 0.01, f.udp_frame(DHCP_SERVER_MAC, RELAY_MAC, DHCP_SERVER_IP,
                                               RELAY_IP, 67, 67, reply, ident=cap.next_ident()))


def button_presses(cap: Capture) -> None:
    # 08:00:01.234 dashButton_1 (DHCP first), and its second burst 17 s later: one press.
    dhcp_exchange(cap, 1.234, BUTTON_1, "192.168.10.51", vendor="AmazonDash", xid=0x1A2B3C01)
    arp_join(cap, 1.9, BUTTON_1, "192.168.10.51")
    dhcp_exchange(cap, 18.6, BUTTON_1, "192.168.10.51", vendor="AmazonDash", discover=False,
                  xid=0x1A2B3C02)
    arp_join(cap, 18.95, BUTTON_1, "192.168.10.51")
    # 08:05:12.500 dashButton_2 behind VLAN 20 (ARP probe first).
    arp_join(cap, 312.5, BUTTON_2, "192.168.20.17", vlans=(VLAN,))
    dhcp_exchange(cap, 313.1, BUTTON_2, "192.168.20.17", vlans=(VLAN,), xid=0x1A2B3C03)
    # 08:12:40.100 dashButton_3 in the back office, its DHCP relayed; dead_time 20 s in MACID.csv,
    # so its ARP 25 s later is a second press.
    relayed_request(cap, 760.1, BUTTON_3, "192.168.30.44", 0x1A2B3C04)
    cap.add(785.1, f.arp_frame(1, BUTTON_3, "192.168.30.44", "192.168.30.1", src=BUTTON_3))
    # 08:20:00 dashButton_1 answers an ARP request: a reply is no press.
    cap.add(1199.99, f.arp_frame(1, GATEWAY_MAC, GATEWAY_IP, "192.168.10.51"))
    cap.add(1200.0, f.arp_frame(2, BUTTON_1, "192.168.10.51", GATEWAY_IP, tha=GATEWAY_MAC,
                                dst=GATEWAY_MAC))
    # 08:30:00.750 dashButton_1 again, ARP first this time, second burst 16 s later.
    arp_join(cap, 1800.75, BUTTON_1, "192.168.10.51")
    dhcp_exchange(cap, 1801.4, BUTTON_1, "192.168.10.51", discover=False, xid=0x1A2B3C05)
    arp_join(cap, 1816.8, BUTTON_1, "192.168.10.51")
    # 08:45:30 dashButton_2 (VLAN 20), DHCP first.
    dhcp_exchange(cap, 2730.0, BUTTON_2, "192.168.20.17", vlans=(VLAN,), discover=False,
                  xid=0x1A2B3C06)
    arp_join(cap, 2730.6, BUTTON_2, "192.168.20.17", vlans=(VLAN,))
    # 09:10:05.5 dashButton_1, with its second burst 18 s later.
    dhcp_exchange(cap, 4205.5, BUTTON_1, "192.168.10.51", vendor="AmazonDash", xid=0x1A2B3C07)
    dhcp_exchange(cap, 4223.5, BUTTON_1, "192.168.10.51", vendor="AmazonDash", discover=False,
                  xid=0x1A2B3C08)


def chatter(cap: Capture, rng: random.Random) -> None:
    end = 4300.0
    # Each device joins once (DHCP + ARP + IPv6 DAD and router solicitation), then talks.
    for index, (mac, ip, host) in enumerate(DEVICES):
        t = 5.0 + index * 97.3
        dhcp_exchange(cap, t, mac, ip, hostname=host, xid=0x7E000000 + index)
        arp_join(cap, t + 0.7, mac, ip)
        link_local = f"fe80::{index + 1:x}:{rng.randrange(1 << 16):x}"
        cap.add(t + 0.9, f.ndp_frame(135, mac, "::", target=link_local, with_option=False))
        cap.add(t + 1.9, f.ndp_frame(133, mac, link_local))
    ports = [443, 443, 443, 80, 993, 5228]
    servers = ["142.250.185.78", "17.253.57.208", "52.114.128.9", "151.101.1.140"]
    t = 10.0
    while t < end:
        mac, ip, _host = rng.choice(DEVICES)
        kind = rng.random()
        if kind < 0.70:
            server = rng.choice(servers)
            sport = rng.randrange(49152, 65535)
            dport = rng.choice(ports)
            size = rng.choice((0, 0, 64, 517, 700))
            cap.add(t, f.tcp_frame(mac, GATEWAY_MAC, ip, server, sport, dport,
                                   seq=rng.randrange(1 << 32), payload=rng.randbytes(size),
                                   ident=cap.next_ident()))
            cap.add(t + 0.02, f.tcp_frame(GATEWAY_MAC, mac, server, ip, dport, sport, flags=0x10,
                                          seq=rng.randrange(1 << 32), ident=cap.next_ident()))
        elif kind < 0.82:
            query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x06amazon\x03com\x00"
            cap.add(t, f.udp_frame(mac, GATEWAY_MAC, ip, GATEWAY_IP, rng.randrange(49152, 65535),
                                   53, query + b"\x00\x01\x00\x01", ident=cap.next_ident()))
        elif kind < 0.90:
            mdns = b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"
            mdns += b"\x08_airplay\x04_tcp\x05local\x00"
            cap.add(t, f.udp_frame(mac, "01:00:5e:00:00:fb", ip, "224.0.0.251", 5353, 5353,
                                   mdns + b"\x00\x0c\x00\x01", ident=cap.next_ident()))
        elif kind < 0.96:
            # The gateway asks who has a device's address; the device replies (no press).
            cap.add(t, f.arp_frame(1, GATEWAY_MAC, GATEWAY_IP, ip))
            cap.add(t + 0.001, f.arp_frame(2, mac, ip, GATEWAY_IP, tha=GATEWAY_MAC,
                                           dst=GATEWAY_MAC))
        else:
            # A lease renewal: a unicast REQUEST from a known address (an unknown MAC: no press).
            msg = f.dhcp(1, mac, f.REQUEST, ciaddr=ip, xid=rng.randrange(1 << 32))
            cap.add(t, f.udp_frame(mac, DHCP_SERVER_MAC, ip, DHCP_SERVER_IP, 68, 67, msg,
                                   ident=cap.next_ident()))
        t += rng.expovariate(1 / 7.0)


def build() -> list[tuple[float, bytes]]:
    rng = random.Random(20261126)  # noqa: S311 - reproducible, not secret
    cap = Capture()
    button_presses(cap)
    chatter(cap, rng)
    return sorted(cap.frames, key=lambda item: item[0])


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else OUT
    frames = build()
    count = f.write_pcapng(out, frames, interface="eth0", tsresol=9)
    print(f"wrote {out}: {count} frames, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
