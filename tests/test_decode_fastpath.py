"""Match first (issue 16 item 3): `Decoder.sight` must give exactly what `decode` gives, for the
devices asked for, and move every counter exactly as `decode` does for all the others.

The frames are real bytes: the bundled sample capture (a pcapng file), frames forge.py writes out
field by field (untagged, 802.1Q, QinQ, relayed DHCP, NDP, malformed), every cut of each of them
(truncated), and hypothesis's mutations of them. Each is given to a fresh `decode` and a fresh
`sight` with several `wanted` sets, and the results and the four counters compared."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashkanban.capture import Frame, open_capture
from dashkanban.detect.decode import Decoder, Sighting
from tests import forge

T = 1764144001.234
ALL = ("arp", "dhcp", "ndp")
BUTTON = "ac:63:be:12:34:56"
STRANGER = "3c:22:fb:00:12:34"
RELAY = "00:1b:21:aa:bb:cc"
SAMPLE = Path(str(resources.files("dashkanban") / "data" / "sample-store.pcapng"))


def _relayed(chaddr: str, vlans: tuple[int, ...] = ()) -> bytes:
    message = forge.dhcp(1, chaddr, forge.REQUEST, giaddr="192.168.30.1", hops=1,
                         requested_ip="192.168.30.44", hostname="dash", vendor_class="Amzn")
    return forge.udp_frame(RELAY, "00:0d:b9:4a:10:02", "192.168.30.1", "192.168.10.2", 67, 67,
                           message, vlans=vlans)


def _dhcp_broken(mutate: str) -> bytes:
    message = forge.dhcp(1, BUTTON, forge.DISCOVER, hostname="h")
    if mutate == "cookie":
        message = message[:236] + b"\x00\x00\x00\x00" + message[240:]
    elif mutate == "overrun":
        message = message[:240] + b"\x35\x01\x01\x0c\x50ab"
    elif mutate == "type-length":
        message = message[:240] + b"\x35\x02\x01\x01\xff"
    return forge.udp_frame(BUTTON, forge.BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67,
                           message)


def _ndp_zero_option() -> bytes:
    frame = bytearray(forge.ndp_frame(133, BUTTON, "fe80::1"))
    frame[14 + 40 + 8 + 1] = 0  # the source link-layer option's length: 0 units
    return bytes(frame)


def _forged() -> list[bytes]:
    frames = []
    for mac in (BUTTON, STRANGER, "00:00:00:00:00:00", "01:00:5e:00:00:01"):
        for vlans in ((), (7,), (100, 7), (1, 2, 3, 4, 5)):  # untagged, 802.1Q, QinQ, too many
            frames += [
                forge.arp_frame(1, mac, "0.0.0.0", "192.168.10.51", vlans=vlans),  # probe
                forge.arp_frame(1, mac, "192.168.10.51", "192.168.10.1", vlans=vlans),
                forge.arp_frame(2, mac, "192.168.10.51", "192.168.10.51", vlans=vlans),
                forge.arp_frame(2, mac, "192.168.10.51", "192.168.10.1", vlans=vlans),  # reply
                # A stranger asking for the button's address: the sender is what counts.
                forge.arp_frame(1, STRANGER, "192.168.10.9", "192.168.10.51", tha=mac,
                                vlans=vlans),
                forge.dhcp_client_frame(mac, forge.DISCOVER, vlans=vlans, hostname="dash-1",
                                        vendor_class="AmazonDash"),
                forge.dhcp_client_frame(mac, forge.REQUEST, vlans=vlans,
                                        requested_ip="192.168.10.51", ciaddr="192.168.10.50"),
                forge.dhcp_client_frame(mac, forge.RELEASE, vlans=vlans),
                _relayed(mac, vlans),
                forge.ndp_frame(133, mac, "fe80::1", vlans=vlans),
                forge.ndp_frame(135, mac, "fe80::1", target="fe80::2", vlans=vlans),
                forge.ndp_frame(135, mac, "::", target="fe80::2", with_option=False,
                                vlans=vlans),  # duplicate address detection
            ]
    frames += [_dhcp_broken(kind) for kind in ("cookie", "overrun", "type-length")]
    frames += [
        _ndp_zero_option(),
        forge.tcp_frame(STRANGER, BUTTON, "10.0.0.1", "10.0.0.2", 443, 5555),
        forge.udp_frame(STRANGER, BUTTON, "10.0.0.1", "10.0.0.2", 53, 53, b"x" * 30),
        b"",
        b"\x08\x06",
    ]
    return frames


FORGED = _forged()


def _sample() -> list[Frame]:
    return list(open_capture(SAMPLE))


def _counters(decoder: Decoder) -> tuple[int, int, int, int]:
    return decoder.frames, decoder.candidates, decoder.sightings, decoder.malformed


def _raw(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _assert_same(frames: Iterable[tuple[bytes, int | None]], wanted: frozenset[bytes],
                 detect: tuple[str, ...] = ALL) -> int:
    """Each frame through a full decoder and a matching-first one; returns how many of the
    full path's sightings were wanted (so a caller can see its sets were not vacuous)."""
    full, first = Decoder(detect), Decoder(detect)
    kept = 0
    for data, vlan in frames:
        expected = full.decode(data, T, vlan)
        got = first.sight(data, T, vlan, wanted)
        if expected is not None and _raw(expected.mac) in wanted:
            assert got == expected, data.hex()
            kept += 1
        else:
            assert got is None, data.hex()
        assert _counters(first) == _counters(full), data.hex()
    return kept


def _macs(frames: Iterable[tuple[bytes, int | None]]) -> set[bytes]:
    decoder = Decoder(ALL)
    found = (decoder.decode(data, T, vlan) for data, vlan in frames)
    return {_raw(s.mac) for s in found if s is not None}


def test_forged_frames_every_wanted_set() -> None:
    frames = [(data, None) for data in FORGED] + [(data, 12) for data in FORGED]  # kernel tag
    seen = _macs(frames)
    assert seen == {_raw(BUTTON), _raw(STRANGER)}
    assert _assert_same(frames, frozenset()) == 0
    kept_one = _assert_same(frames, frozenset({_raw(BUTTON)}))
    kept_all = _assert_same(frames, frozenset(seen))
    assert 0 < kept_one < kept_all
    # Counted as decode counts them: the malformed (zero and multicast senders, bad DHCP, NDP
    # option of length 0, five tags) are counted whatever is wanted.
    decoder = Decoder(ALL)
    for data, vlan in frames:
        decoder.sight(data, T, vlan, frozenset())
    assert decoder.malformed > 0
    assert decoder.sightings > 0


def test_truncated_frames() -> None:
    """Every cut of every forged frame: short headers, cut options, cut addresses."""
    cuts = [(data[:end], None) for data in FORGED for end in range(0, len(data), 3)]
    _assert_same(cuts, frozenset())
    assert _assert_same(cuts, frozenset({_raw(BUTTON), _raw(STRANGER)})) > 0


@pytest.mark.parametrize("detect", [("arp",), ("dhcp",), ("ndp",), ("arp", "dhcp"), ALL])
def test_only_the_detected_methods(detect: tuple[str, ...]) -> None:
    frames = [(data, None) for data in FORGED]
    _assert_same(frames, frozenset(), detect)
    _assert_same(frames, frozenset({_raw(BUTTON), _raw(STRANGER)}), detect)


def test_the_sample_capture() -> None:
    """The bundled pcapng file, every record, with its buttons wanted, none, and all."""
    frames = [(frame.data, frame.vlan) for frame in _sample()]
    seen = _macs(frames)
    assert len(seen) > 3
    buttons = frozenset(_raw(mac) for mac in ("ac:63:be:12:34:56", "fc:a6:67:0a:0b:0c",
                                              "68:54:fd:01:02:03"))
    assert _assert_same(frames, buttons) > 0
    assert _assert_same(frames, frozenset()) == 0
    assert _assert_same(frames, frozenset(seen)) > 0


def test_untagged_arp_request_of_another_device() -> None:
    """The flood's frame: counted as a sighting, nothing built; a malformed sender still counted
    as malformed."""
    decoder = Decoder(ALL)
    frame = forge.arp_frame(1, STRANGER, "192.168.10.9", "192.168.10.1")
    assert decoder.sight(frame, T, None, frozenset({_raw(BUTTON)})) is None
    assert _counters(decoder) == (1, 1, 1, 0)
    zero = forge.arp_frame(1, "00:00:00:00:00:00", "192.168.10.9", "192.168.10.1")
    assert decoder.sight(zero, T, None, frozenset({_raw(BUTTON)})) is None
    assert _counters(decoder) == (2, 2, 1, 1)
    button = forge.arp_frame(1, BUTTON, "0.0.0.0", "192.168.10.51")
    assert decoder.sight(button, T, 5, frozenset({_raw(BUTTON)})) == Sighting(
        BUTTON, "arp", T, 5, "192.168.10.51")
    assert _counters(decoder) == (3, 3, 2, 1)


def test_relayed_dhcp_is_matched_by_chaddr_not_the_relay() -> None:
    decoder = Decoder(ALL)
    assert decoder.sight(_relayed(STRANGER), T, None, frozenset({_raw(RELAY)})) is None
    assert decoder.sight(_relayed(BUTTON, (100, 7)), T, None, frozenset({_raw(BUTTON)})) == (
        Sighting(BUTTON, "dhcp", T, 7, "192.168.30.44", "dash", "Amzn"))
    assert _counters(decoder) == (2, 2, 2, 0)


_BASES = [data for data in FORGED if len(data) >= 42][:60]


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_BASES),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    st.integers(0, 400),
    st.sampled_from([None, 3]),
)
def test_mutated_frames(base: bytes, flips: list[tuple[int, int]], cut: int,
                        vlan: int | None) -> None:
    frame = bytearray(base)
    for index, value in flips:
        if index < len(frame):
            frame[index] = value
    data = bytes(frame[:cut])
    for wanted in (frozenset(), frozenset({_raw(BUTTON)}), frozenset({data[22:28]})):
        _assert_same([(data, vlan)], wanted)
