"""Classic BPF programs for the kernel (live capture) and for libpcap (capture files); pure.

Two programs, the same for a live socket and a file:

- the candidate program: ARP, UDP to port 67 and ICMPv6 router/neighbour solicitations, for the
  methods in `detect` (what `discover` and `[buttons] source = inventory | both` need);
- the button program (`[buttons] source = csv`): the same kinds of packets, but only from the
  buttons' MACs. The MAC a press is known by (the ARP sender address, the DHCP `chaddr`, also in
  a relayed request, the NDP source link-layer option) is copied into the scratch cells M[0] (first
  4 bytes) and M[1] (last 2) and compared with each button's by one shared matcher, so noise from
  other devices never wakes Python, whatever the flood.

Frames are read with 0, 1 or 2 VLAN tags left in them: live, the kernel strips the outer tag before
the filter runs (a QinQ frame keeps its inner one); in a capture file every tag stays.

The kernel's limits shape the button program: at most `BPF_MAXINSNS` (4,096) instructions, so
beyond about 1,300 buttons only the MAC's last 4 bytes are compared (the registry makes the exact
check in Python), and beyond about 4,000 the candidate program is used; conditional jumps reach at
most 255 instructions ahead, so the matcher is cut into chunks with their own `ret` islands; and
the checker walks the program straight through (past a `ret`), so both scratch cells are stored
before anything else.

`run` is a classic-BPF interpreter with the kernel's and libpcap's semantics: the reference the
tests hold the programs to, and the filter of the pure file readers when libpcap is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Instruction = tuple[int, int, int, int]  # code, jump if true, jump if false, k

BPF_MAXINSNS = 4096  # <linux/bpf_common.h>; libpcap has no lower limit
MAX_JUMP = 255  # jt and jf are 8 bits
ACCEPT = 65536  # snapshot length returned for a frame kept (no candidate is longer)

# Opcodes (<linux/filter.h>, <linux/bpf_common.h>)
LD_W_ABS = 0x20  # A = pkt[k:k+4] (network order)
LD_H_ABS = 0x28
LD_B_ABS = 0x30
LD_W_IND = 0x40  # A = pkt[X+k:X+k+4]
LD_H_IND = 0x48
LD_B_IND = 0x50
LD_IMM = 0x00
LD_MEM = 0x60
LD_LEN = 0x80
LDX_IMM = 0x01
LDX_MEM = 0x61
LDX_LEN = 0x81
LDX_B_MSH = 0xB1  # X = 4 * (pkt[k] & 0xf): an IPv4 header length
ST = 0x02
STX = 0x03
JA = 0x05
JEQ = 0x15
JGT = 0x25
JGE = 0x35
JSET = 0x45
RET_K = 0x06
RET_A = 0x16
TAX = 0x07
TXA = 0x87

ETH_ARP = 0x0806
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, old QinQ: as the decoder reads them
DEPTHS = (0, 4, 8)  # bytes of VLAN tags left in the frame: none, one, two

Kind = Literal["buttons", "buttons-last4", "candidates"]


@dataclass(frozen=True, slots=True)
class Program:
    """An assembled program and what it passes; `note` says why a less selective one was chosen
    (for one INFO line where it is attached)."""

    kind: Kind
    instructions: tuple[Instruction, ...]
    buttons: int = 0  # MACs compared in the program (0: the candidate program)
    note: str | None = None

    def __len__(self) -> int:
        return len(self.instructions)

    def describe(self) -> str:
        if self.kind == "buttons":
            return f"the button filter ({self.buttons} MACs)"
        if self.kind == "buttons-last4":
            return f"the button filter ({self.buttons} MACs by their last 4 bytes)"
        return "the candidate filter"


# ---------------------------------------------------------------------------------------------
# A tiny assembler: named labels, forward jumps only; "accept"/"reject" resolve to the next island


class _Assembler:
    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}
        self.islands: list[int] = []  # index of each island's `ret ACCEPT` (its `ret 0` follows)

    def __len__(self) -> int:
        return len(self.code)

    def label(self, name: str) -> None:
        assert name not in self.labels, name
        self.labels[name] = len(self.code)

    def emit(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k))

    def island(self, falls_through: bool) -> None:
        """`ret ACCEPT; ret 0`, jumped over when the code before it falls through."""
        if falls_through:
            self.emit(JA, 2)
        self.islands.append(len(self.code))
        self.emit(RET_K, ACCEPT)
        self.emit(RET_K, 0)

    def assemble(self) -> tuple[Instruction, ...]:
        out: list[Instruction] = []
        for index, (code, jt, jf, k) in enumerate(self.code):
            out.append((code, self._target(jt, index), self._target(jf, index), k))
        return tuple(out)

    def _target(self, jump: str | int, index: int) -> int:
        if isinstance(jump, int):
            return jump
        if jump in ("accept", "reject"):
            at = next(i for i in self.islands if i > index) + (jump == "reject")
        else:
            at = self.labels[jump]
        offset = at - index - 1
        if not 0 <= offset <= MAX_JUMP:
            raise AssertionError(f"jump to {jump} spans {offset} instructions")
        return offset


def _dispatch(asm: _Assembler, methods: frozenset[str], handler: str) -> None:
    """EtherType dispatch at each depth of tags left in the frame, to `{handler}_{kind}{d}`."""
    for d in DEPTHS:
        asm.label(f"eth{d}")
        asm.emit(LD_H_ABS, 12 + d)
        if "arp" in methods:
            asm.emit(JEQ, ETH_ARP, f"{handler}_arp{d}", 0)
        if "dhcp" in methods:
            asm.emit(JEQ, ETH_IPV4, f"ipv4{d}", 0)
        if "ndp" in methods:
            asm.emit(JEQ, ETH_IPV6, f"ipv6{d}", 0)
        if d != DEPTHS[-1]:
            for tpid in VLAN_TPIDS[:-1]:
                asm.emit(JEQ, tpid, f"eth{d + 4}", 0)
            asm.emit(JEQ, VLAN_TPIDS[-1], f"eth{d + 4}", "reject")
        else:
            asm.emit(RET_K, 0)
        if "dhcp" in methods:
            asm.label(f"ipv4{d}")
            asm.emit(LD_B_ABS, 23 + d)  # IPv4 protocol
            asm.emit(JEQ, 17, 0, "reject")
            asm.emit(LD_H_ABS, 20 + d)  # flags and fragment offset
            asm.emit(JSET, 0x1FFF, "reject", 0)  # a later fragment has no UDP header
            asm.emit(LDX_B_MSH, 14 + d)
            asm.emit(LD_H_IND, 16 + d)  # UDP destination port
            asm.emit(JEQ, 67, f"{handler}_dhcp{d}", "reject")
        if "ndp" in methods:
            asm.label(f"ipv6{d}")
            asm.emit(LD_B_ABS, 20 + d)  # IPv6 next header: ICMPv6 right after the header
            asm.emit(JEQ, 58, 0, "reject")
            asm.emit(LD_B_ABS, 54 + d)  # ICMPv6 type
            asm.emit(JEQ, 133, f"{handler}_rs{d}", 0)
            asm.emit(JEQ, 135, f"{handler}_ns{d}", "reject")
        asm.island(falls_through=False)


def candidate_program(detect: Iterable[str] = ("arp", "dhcp", "ndp")) -> Program:
    """The program that passes every candidate of the given methods, with 0, 1 or 2 tags left in
    the frame."""
    methods = frozenset(detect)
    asm = _Assembler()
    _dispatch(asm, methods, "pass")
    for d in DEPTHS:
        for name in ("arp", "dhcp", "rs", "ns"):
            asm.label(f"pass_{name}{d}")
    asm.emit(RET_K, ACCEPT)
    asm.emit(RET_K, 0)
    return Program("candidates", asm.assemble())


def _mac_bytes(mac: str) -> bytes | None:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", "").replace(".", ""))
    return raw if len(raw) == 6 else None  # an EUI-64 (an MQTT button) is never on the LAN


def _copy_macs(asm: _Assembler, methods: frozenset[str], last4: bool) -> None:
    """Per kind and depth: copy the device's MAC into M[0] (and M[1]), then `ja match`.

    Exact: M[0] = bytes 0-3, M[1] = bytes 4-5. Last 4: M[0] = bytes 2-5.
    """

    def copy(load_w: int, load_h: int, at: int) -> None:
        if last4:
            asm.emit(load_w, at + 2)
            asm.emit(ST, 0)
        else:
            asm.emit(load_w, at)
            asm.emit(ST, 0)
            asm.emit(load_h, at + 4)
            asm.emit(ST, 1)
        asm.emit(JA, 0)  # patched to `match` below (JA's offset is 32 bits: no island needed)
        pending.append(len(asm) - 1)

    pending: list[int] = []
    for d in DEPTHS:
        if "arp" in methods:
            asm.label(f"mac_arp{d}")
            copy(LD_W_ABS, LD_H_ABS, 22 + d)  # sender hardware address
        if "dhcp" in methods:
            asm.label(f"mac_dhcp{d}")
            # chaddr: IPv4 header (X bytes) + UDP header (8) + 28; X is still loaded.
            copy(LD_W_IND, LD_H_IND, 50 + d)
        if "ndp" in methods:
            # The source link-layer address option (type 1, 8 bytes) when it comes first, as
            # every stack sends it; otherwise (duplicate address detection, other options
            # first) the frame passes as a candidate and Python decides.
            for name, opts in (("rs", 62), ("ns", 78)):
                asm.label(f"mac_{name}{d}")
                asm.emit(LD_LEN)  # no room for an option: a load past the end would drop it
                asm.emit(JGE, opts + 8 + d, 0, "accept")
                asm.emit(LD_H_ABS, opts + d)
                asm.emit(JEQ, 0x0101, 0, "accept")
                asm.island(falls_through=True)
                copy(LD_W_ABS, LD_H_ABS, opts + 2 + d)
    asm.label("match")
    for index in pending:
        code, jt, jf, _k = asm.code[index]
        asm.code[index] = (code, jt, jf, asm.labels["match"] - index - 1)


# Instructions a chunk of the matcher may span before it needs its own accept/reject island.
_CHUNK = MAX_JUMP - 8


def _matcher_exact(asm: _Assembler, macs: Sequence[bytes]) -> None:
    """A = M[0]; per distinct first-4-bytes value: `jeq hi` then `ld M[1]` and one `jeq lo` per
    MAC sharing it. A group of more than fit in a chunk is split; its parts re-test `hi`."""
    groups: dict[int, list[int]] = {}
    for raw in sorted(macs):
        groups.setdefault(int.from_bytes(raw[:4], "big"), []).append(
            int.from_bytes(raw[4:], "big"))
    parts: list[tuple[int, list[int], bool]] = []  # hi, los, last part of this hi
    per_part = _CHUNK - 12
    for hi, los in groups.items():
        for start in range(0, len(los), per_part):
            piece = los[start : start + per_part]
            parts.append((hi, piece, start + per_part >= len(los)))
    asm.emit(LD_MEM, 0)
    since = len(asm)  # first instruction that jumps to the coming island
    for n, (hi, los, last) in enumerate(parts):
        size = 2 + len(los) + (0 if last else 1)
        if len(asm) + size - since > _CHUNK:
            asm.island(falls_through=True)
            since = len(asm)
        asm.emit(JEQ, hi, 0, f"part{n + 1}")
        asm.emit(LD_MEM, 1)
        for i, lo in enumerate(los):
            final = i == len(los) - 1
            asm.emit(JEQ, lo, "accept", ("reject" if last else 0) if final else 0)
        if not last:
            asm.emit(LD_MEM, 0)  # the next part has the same hi: test it again with A = M[0]
        asm.label(f"part{n + 1}")
    asm.emit(RET_K, 0)
    asm.island(falls_through=False)


def _matcher_last4(asm: _Assembler, macs: Sequence[bytes]) -> None:
    values = sorted({int.from_bytes(raw[2:], "big") for raw in macs})
    asm.emit(LD_MEM, 0)
    since = len(asm)
    for value in values:
        if len(asm) + 1 - since > _CHUNK:
            asm.island(falls_through=True)
            since = len(asm)
        asm.emit(JEQ, value, "accept", 0)
    asm.emit(RET_K, 0)
    asm.island(falls_through=False)


def button_program(macs: Iterable[str], detect: Iterable[str], *, last4: bool = False) -> Program:
    """The program passing only the candidates of these MACs (any common notation; EUI-64
    addresses are left out). It may exceed `BPF_MAXINSNS`: see `button_programs`."""
    methods = frozenset(detect)
    raws = sorted({raw for mac in macs if (raw := _mac_bytes(mac)) is not None})
    asm = _Assembler()
    # The checker wants every scratch cell stored before it is loaded on any path.
    asm.emit(LD_IMM, 0)
    asm.emit(ST, 0)
    asm.emit(ST, 1)
    _dispatch(asm, methods, "mac")
    _copy_macs(asm, methods, last4)
    if last4:
        _matcher_last4(asm, raws)
    else:
        _matcher_exact(asm, raws)
    return Program("buttons-last4" if last4 else "buttons", asm.assemble(), len(raws))


def button_programs(macs: Iterable[str], detect: Iterable[str]) -> tuple[Program, ...]:
    """The programs to try, most selective first: exact MACs, their last 4 bytes, candidates.

    Those over `BPF_MAXINSNS` are left out, and the first one says why in its `note`. The rest
    are the fallbacks when the kernel refuses one (ENOMEM: the socket's `optmem_max`). A list far
    too long is not even built (a program of 10,000 MACs would cost the daemon megabytes of
    memory for a moment): it is known to be too long from its size at least.
    """
    raws = sorted({raw for mac in macs if (raw := _mac_bytes(mac)) is not None})
    count = len(raws)
    candidates = candidate_program(detect)
    if count == 0:
        return (candidates,)
    chain: list[Program] = []
    note: str | None = None
    # At least: a `jeq` per MAC, and per distinct first 4 bytes a `jeq` and an `ld`.
    least = count + 2 * len({raw[:4] for raw in raws})
    exact = button_program(_texts(raws), detect) if least <= BPF_MAXINSNS else None
    if exact is not None and len(exact) <= BPF_MAXINSNS:
        chain.append(exact)
    else:
        size = f"{len(exact)} instructions" if exact else f"at least {least} instructions"
        note = (
            f"{count} buttons: too many to compare whole MACs in the kernel filter "
            f"({size}, at most {BPF_MAXINSNS}); it compares their last 4 bytes and Python the "
            "whole MAC"
        )
    least = len({raw[2:] for raw in raws})
    last4 = (button_program(_texts(raws), detect, last4=True) if least <= BPF_MAXINSNS
             else None)
    if last4 is not None and len(last4) <= BPF_MAXINSNS:
        chain.append(last4 if note is None or chain else _noted(last4, note))
    else:
        size = f"{len(last4)} instructions" if last4 else f"at least {least} instructions"
        note = (
            f"{count} buttons: too many for the kernel filter even by the last 4 bytes of "
            f"their MACs ({size}, at most {BPF_MAXINSNS}); it passes every candidate and "
            "Python matches"
        )
    chain.append(candidates if chain else _noted(candidates, note))
    return tuple(chain)


def _texts(raws: Iterable[bytes]) -> list[str]:
    return [raw.hex() for raw in raws]


def _noted(program: Program, note: str | None) -> Program:
    return Program(program.kind, program.instructions, program.buttons, note)


# ---------------------------------------------------------------------------------------------
# The interpreter


def run(instructions: Sequence[Instruction], packet: bytes) -> int:
    """Run a classic BPF program on one frame as the kernel and libpcap do: the snapshot length
    it returns (0 = drop). A load beyond the frame's end, or a division by zero, returns 0."""
    a = x = 0
    mem = [0] * 16
    n = len(packet)
    pc = 0
    while True:
        code, jt, jf, k = instructions[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            value = x if code & 0x08 else k
            if op == 0x10:
                hit = a == value
            elif op == 0x20:
                hit = a > value
            elif op == 0x30:
                hit = a >= value
            else:
                hit = bool(a & value)
            pc += jt if hit else jf
        elif cls == 0x00 or cls == 0x01:  # LD, LDX
            mode = code & 0xE0
            size = code & 0x18
            if mode == 0x00:
                value = k
            elif mode == 0x60:
                value = mem[k]
            elif mode == 0x80:
                value = n
            elif mode == 0xA0:  # MSH
                if k >= n:
                    return 0
                value = (packet[k] & 0x0F) * 4
            else:
                at = k + x if mode == 0x40 else k
                width = 4 if size == 0x00 else 2 if size == 0x08 else 1
                if at + width > n:
                    return 0
                value = int.from_bytes(packet[at : at + width], "big")
            if cls == 0x00:
                a = value
            else:
                x = value
        elif cls == 0x06:  # RET
            return (a if code & 0x18 == 0x10 else k) & 0xFFFFFFFF
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            op = code & 0xF0
            value = x if code & 0x08 else k
            if op == 0x00:
                a = a + value
            elif op == 0x10:
                a = a - value
            elif op == 0x20:
                a = a * value
            elif op == 0x30:
                if value == 0:
                    return 0
                a = a // value
            elif op == 0x40:
                a = a | value
            elif op == 0x50:
                a = a & value
            elif op == 0x60:
                a = a << value if value < 32 else 0
            elif op == 0x70:
                a = a >> value if value < 32 else 0
            elif op == 0x80:
                a = -a
            elif op == 0x90:
                if value == 0:
                    return 0
                a = a % value
            else:
                a = a ^ value
            a &= 0xFFFFFFFF
        else:  # MISC
            if code & 0xF8 == 0x80:
                a = x
            else:
                x = a
