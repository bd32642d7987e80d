"""capture/bpf.py: the programs' shape against the kernel's rules, and what they pass, run by the
interpreter (the kernel itself runs them in tests/e2e/test_bpf_netns.py, libpcap in
tests/test_libpcap.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashkanban.capture import bpf
from dashkanban.detect.decode import Decoder
from tests import forge

BUTTON = "ac:63:be:12:34:56"
STRANGER = "3c:22:fb:8e:41:07"
RELAY = "00:1b:21:aa:bb:cc"
ALL = ("arp", "dhcp", "ndp")


def macs(n: int, seed: int = 1) -> list[str]:
    r = random.Random(seed)
    return [":".join(f"{r.randrange(256) & 0xFE if i == 0 else r.randrange(256):02x}"
                     for i in range(6)) for _ in range(n)]


def relayed(chaddr: str, vlans: tuple[int, ...] = ()) -> bytes:
    """A DHCP REQUEST as a relay agent forwards it: the relay's MACs and IPs outside (in the
    VLAN `vlans` names, outer tag first, when the relay sends it tagged)."""
    payload = forge.dhcp(1, chaddr, forge.REQUEST, giaddr="192.168.30.1", hops=1)
    return forge.udp_frame(RELAY, "00:0d:b9:4a:10:01", "192.168.30.1", "192.168.10.1", 67, 67,
                           payload, vlans=vlans)


def presses(mac: str, vlans: tuple[int, ...] = ()) -> list[bytes]:
    """Every kind of packet a press of `mac` may send."""
    return [
        forge.arp_frame(1, mac, "0.0.0.0", "192.168.10.51", vlans=vlans),
        forge.arp_frame(1, mac, "192.168.10.51", "192.168.10.1", vlans=vlans),
        forge.dhcp_client_frame(mac, forge.DISCOVER, vlans=vlans),
        forge.dhcp_client_frame(mac, forge.REQUEST, vlans=vlans, requested_ip="192.168.10.51"),
        forge.ndp_frame(133, mac, "fe80::ae63:beff:fe12:3456", vlans=vlans),
        forge.ndp_frame(135, mac, "fe80::ae63:beff:fe12:3456", target="fe80::1", vlans=vlans),
    ]


def noise(button: str, vlans: tuple[int, ...] = ()) -> list[bytes]:
    """Other devices' packets, several of which name the button somewhere else than where the
    program looks."""
    return [
        *presses(STRANGER, vlans),
        # A stranger asking for the button's address: the button is the ARP *target*.
        forge.arp_frame(1, STRANGER, "192.168.10.31", "192.168.10.51", tha=button, dst=button,
                        vlans=vlans),
        # The button's MAC as the Ethernet source of a stranger's ARP and DHCP.
        forge.arp_frame(1, STRANGER, "192.168.10.31", "192.168.10.1", src=button, vlans=vlans),
        forge.udp_frame(button, forge.BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67,
                        forge.dhcp(1, STRANGER, forge.DISCOVER), vlans=vlans),
        # A server's reply goes to port 68: not even a candidate.
        forge.udp_frame("00:0d:b9:4a:10:02", button, "192.168.10.1", "192.168.10.51", 67, 68,
                        forge.dhcp(2, button, forge.OFFER), vlans=vlans),
        forge.tcp_frame(button, "00:0d:b9:4a:10:01", "192.168.10.51", "1.2.3.4", 50000, 443,
                        vlans=vlans),
    ]


def passes(program: bpf.Program, frame: bytes) -> bool:
    return bpf.run(program.instructions, frame) > 0


# ---------------------------------------------------------------------------------------------
# The kernel's rules (net/core/filter.c: bpf_check_classic, check_load_and_stores)


def kernel_accepts(program: bpf.Program) -> None:
    insns = program.instructions
    assert 0 < len(insns) <= bpf.BPF_MAXINSNS
    masks = [0xFFFF] * len(insns)
    valid = 0
    for pc, (code, jt, jf, k) in enumerate(insns):
        valid &= masks[pc]
        if code & 0x07 == 0x05:
            if code == bpf.JA:
                assert pc + 1 + k < len(insns)
                masks[pc + 1 + k] &= valid
            else:
                assert pc + 1 + max(jt, jf) < len(insns), f"jump out of the program at {pc}"
                masks[pc + 1 + jt] &= valid
                masks[pc + 1 + jf] &= valid
            valid = 0xFFFF
        elif code in (bpf.ST, bpf.STX):
            assert 0 <= k < 16
            valid |= 1 << k
        elif code in (bpf.LD_MEM, bpf.LDX_MEM):
            assert valid & (1 << k), f"M[{k}] loaded at {pc} before it is stored on every path"
        assert 0 <= jt <= 255
        assert 0 <= jf <= 255
    assert insns[-1][0] in (bpf.RET_K, bpf.RET_A), "the last instruction must return"


@pytest.mark.parametrize("count", [1, 20, 500, 1000, 1250])
@pytest.mark.parametrize("last4", [False, True])
def test_programs_pass_the_kernels_checks(count: int, last4: bool) -> None:
    kernel_accepts(bpf.button_program(macs(count), ALL, last4=last4))


def test_same_first_bytes_are_split_into_parts() -> None:
    """Buttons bought together share their first 4 bytes: one group longer than a jump reaches."""
    sequential = [f"ac:63:be:12:{i >> 8:02x}:{i & 0xFF:02x}" for i in range(600)]
    program = bpf.button_program(sequential, ALL)
    kernel_accepts(program)
    for mac in sequential[::37] + sequential[-1:]:
        assert all(passes(program, frame) for frame in presses(mac))
    assert not any(passes(program, frame) for frame in presses("ac:63:be:12:02:58"))
    assert not any(passes(program, frame) for frame in presses("ac:63:be:13:00:00"))


def test_candidate_program_shape() -> None:
    program = bpf.candidate_program(ALL)
    kernel_accepts(program)
    assert program.instructions[-2:] == ((bpf.RET_K, 0, 0, 65536), (bpf.RET_K, 0, 0, 0))
    assert len(bpf.candidate_program(("arp",))) < len(program)


# ---------------------------------------------------------------------------------------------
# The fallback chain


def test_fallback_steps() -> None:
    few = bpf.button_programs(macs(20), ("arp", "dhcp"))
    assert [p.kind for p in few] == ["buttons", "buttons-last4", "candidates"]
    assert [p.buttons for p in few] == [20, 20, 0]
    assert few[0].note is None
    assert len(few[0]) == 140  # about 3 instructions a button

    many = bpf.button_programs(macs(1400), ("arp", "dhcp"))
    assert [p.kind for p in many] == ["buttons-last4", "candidates"]
    assert many[0].note == (
        "1400 buttons: too many to compare whole MACs in the kernel filter (at least 4200 "
        "instructions, at most 4096); it compares their last 4 bytes and Python the whole MAC"
    )
    too_many = bpf.button_programs(macs(4100), ("arp", "dhcp"))
    assert [p.kind for p in too_many] == ["candidates"]
    assert too_many[0].note == (
        "4100 buttons: too many for the kernel filter even by the last 4 bytes of their MACs "
        "(at least 4100 instructions, at most 4096); it passes every candidate and Python "
        "matches"
    )
    huge = bpf.button_programs(macs(10_000), ("arp", "dhcp"))
    assert [p.kind for p in huge] == ["candidates"]
    assert huge[0].note == (
        "10000 buttons: too many for the kernel filter even by the last 4 bytes of their MACs "
        "(at least 10000 instructions, at most 4096); it passes every candidate and Python "
        "matches"
    )
    assert bpf.button_programs([], ALL) == (bpf.candidate_program(ALL),)
    # An EUI-64 (an MQTT button) is never on the LAN.
    assert bpf.button_programs(["00:12:4b:00:01:02:03:04"], ALL) == (bpf.candidate_program(ALL),)


# ---------------------------------------------------------------------------------------------
# What they pass


STEPS = {"exact": 20, "exact-large": 1250, "last4": 1400}


@pytest.fixture(params=sorted(STEPS))
def program(request: pytest.FixtureRequest) -> bpf.Program:
    chosen = bpf.button_programs([BUTTON, *macs(STEPS[request.param] - 1)], ALL)[0]
    assert chosen.kind == ("buttons-last4" if request.param == "last4" else "buttons")
    return chosen


@pytest.mark.parametrize("vlans", [(), (20,), (300, 30)], ids=["untagged", "802.1Q", "QinQ"])
def test_button_passes_and_others_do_not(program: bpf.Program, vlans: tuple[int, ...]) -> None:
    for frame in [*presses(BUTTON, vlans), relayed(BUTTON, vlans)]:
        assert passes(program, frame)
    for frame in [*noise(BUTTON, vlans), relayed(STRANGER, vlans)]:
        assert not passes(program, frame), frame.hex()


def test_ndp_without_the_option_first_passes_as_a_candidate() -> None:
    program = bpf.button_program([BUTTON], ALL)
    dad = forge.ndp_frame(135, STRANGER, "::", target="fe80::1", with_option=False)
    assert passes(program, dad)  # duplicate address detection: Python decides
    assert not passes(bpf.button_program([BUTTON], ("arp", "dhcp")), dad)


def test_detect_limits_the_kinds() -> None:
    program = bpf.button_program([BUTTON], ("arp",))
    got = [passes(program, frame) for frame in presses(BUTTON)]
    assert got == [True, True, False, False, False, False]


# Any frame: what the decoder would sight from a button, the program passes; and it passes
# nothing the candidate program drops.
BASES = [*presses(BUTTON), *presses(BUTTON, (20,)), *presses(BUTTON, (300, 30)), relayed(BUTTON),
         relayed(BUTTON, (20,)), relayed(BUTTON, (300, 30)), *noise(BUTTON)]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(BASES), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                         max_size=4), st.integers(0, 400))
def test_no_button_sighting_is_dropped(base: bytes, flips: list[tuple[int, int]], cut: int
                                       ) -> None:
    frame = bytearray(base)
    for index, value in flips:
        if index < len(frame):
            frame[index] = value
    data = bytes(frame[: max(cut, 14)])
    exact = bpf.button_program([BUTTON, *macs(30)], ALL)
    last4 = bpf.button_program([BUTTON, *macs(30)], ALL, last4=True)
    candidates = bpf.candidate_program(ALL)
    sighting = Decoder(ALL).decode(data, 0.0)
    if sighting is not None and sighting.mac == BUTTON:
        assert passes(exact, data)
        assert passes(last4, data)
        assert passes(candidates, data)
    if passes(exact, data) or passes(last4, data):
        assert passes(candidates, data)


def test_interpreter_semantics() -> None:
    run = bpf.run
    assert run([(bpf.LD_W_ABS, 0, 0, 2), (bpf.RET_A, 0, 0, 0)], b"\x00\x01\x02\x03\x04\x05") \
        == 0x02030405
    assert run([(bpf.LD_W_ABS, 0, 0, 3), (bpf.RET_A, 0, 0, 0)], b"\x00\x01\x02\x03\x04\x05") == 0
    assert run([(bpf.LDX_B_MSH, 0, 0, 0), (bpf.TXA, 0, 0, 0), (bpf.RET_A, 0, 0, 0)],
               b"\x45") == 20
    assert run([(bpf.LD_IMM, 0, 0, 7), (bpf.JGT, 0, 1, 6), (bpf.RET_K, 0, 0, 1),
                (bpf.RET_K, 0, 0, 2)], b"") == 1
    assert run([(0x34, 0, 0, 0), (bpf.RET_K, 0, 0, 9)], b"") == 0  # A / 0 drops the frame
