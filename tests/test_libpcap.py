"""One filter for files: the project's BPF program run on capture files inside libpcap (ctypes)
gives exactly what the pure readers + the interpreter give, on every kind of capture the tests
make, good or broken."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashkanban.capture import Frame, bpf, libpcap, open_capture
from dashkanban.errors import CaptureError
from tests import forge
from tests.file_readers import MISSING, use_reader
from tests.test_bpf import BUTTON, STRANGER, noise, presses, relayed

DATA = Path(__file__).resolve().parent.parent / "src" / "dashkanban" / "data"
T0 = 1764144000.0

PROGRAMS = {
    "buttons": bpf.button_programs([BUTTON, "68:54:fd:01:02:03", "fc:a6:67:0a:0b:0c"],
                                   ("arp", "dhcp", "ndp"))[0],
    "last4": bpf.button_program([BUTTON, "68:54:fd:01:02:03"], ("arp", "dhcp"), last4=True),
    "candidates": bpf.candidate_program(("arp", "dhcp", "ndp")),
}

MIXED = [
    *presses(BUTTON), *presses(BUTTON, (20,)), *presses(BUTTON, (300, 30)), relayed(BUTTON),
    *noise(BUTTON), *noise(BUTTON, (20,)), *noise(BUTTON, (300, 30)), relayed(STRANGER),
    relayed(BUTTON, (20,)), relayed(BUTTON, (300, 30)),  # a relay agent on a trunk port
    relayed(STRANGER, (20,)), relayed(STRANGER, (300, 30)),
    forge.ndp_frame(135, STRANGER, "::", target="fe80::1", with_option=False),
    b"\x00" * 5,  # too short for anything: the decoder counts it as malformed
    forge.arp_frame(1, BUTTON, "0.0.0.0", "10.0.0.1", vlans=(1, 2, 3)),  # three tags
]
TIMED = [(T0 + i * 0.123457, frame) for i, frame in enumerate(MIXED)]


def pcap_bytes(**kwargs: bool) -> bytes:
    buffer = io.BytesIO()
    forge.write_pcap(buffer, TIMED, **kwargs)
    return buffer.getvalue()


def pcapng_bytes(tsresol: int = 6) -> bytes:
    return (forge.pcapng_header() + forge.pcapng_interface("eth0", tsresol=tsresol)
            + b"".join(forge.pcapng_packet(0, t, f, tsresol=tsresol) for t, f in TIMED))


def multi_section() -> bytes:
    return (
        forge.pcapng_header()
        + forge.pcapng_interface("eth0")
        + forge.pcapng_interface("eth1", tsresol=9)
        + forge.pcapng_packet(1, T0 + 0.123456789, MIXED[0], tsresol=9)
        + forge.pcapng_packet(0, T0 + 1.000001, MIXED[2])
        + forge.pcapng_simple_packet(MIXED[3])
        + forge.pcapng_header(big_endian=True)
        + forge.pcapng_interface("wlan0", tsresol=0x80 | 10, big_endian=True)
        + forge.pcapng_packet(0, T0 + 5.5, MIXED[1], tsresol=0x80 | 10, big_endian=True)
    )


def corrupt_pcap_length() -> bytes:
    data = bytearray(pcap_bytes())
    at = 24 + 16 + len(MIXED[0])
    data[at + 8 : at + 12] = struct.pack("<I", 10_000_000)
    return bytes(data)


def non_ethernet_pcap() -> bytes:
    buffer = io.BytesIO()
    forge.write_pcap(buffer, TIMED, linktype=113)
    return buffer.getvalue()


CAPTURES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "sample": ("pcapng", lambda: (DATA / "sample-store.pcapng").read_bytes()),
    "pcap": ("pcap", pcap_bytes),
    "pcap-big-endian": ("pcap", lambda: pcap_bytes(big_endian=True)),
    "pcap-nanoseconds": ("pcap", lambda: pcap_bytes(nanoseconds=True)),
    "pcapng": ("pcapng", pcapng_bytes),
    "pcapng-nanoseconds": ("pcapng", lambda: pcapng_bytes(9)),
    "pcapng-sections": ("pcapng", multi_section),
    "pcap-cut": ("pcap", lambda: pcap_bytes()[:-10]),
    "pcap-cut-header": ("pcap", lambda: pcap_bytes()[:24 + 16 + len(MIXED[0]) + 7]),
    "pcapng-cut": ("pcapng", lambda: pcapng_bytes()[:-5]),
    "sample-cut": ("pcapng", lambda: (DATA / "sample-store.pcapng").read_bytes()[:40001]),
    "pcap-corrupt-length": ("pcap", corrupt_pcap_length),
    "pcap-not-ethernet": ("pcap", non_ethernet_pcap),
    "pcap-empty": ("pcap", lambda: pcap_bytes()[:24]),
}


def read_all(path: Path, program: bpf.Program, libpcap_on: bool
             ) -> tuple[list[Frame], str | None, int]:
    capture = open_capture(path, program=program, libpcap=libpcap_on)
    frames: list[Frame] = []
    error: str | None = None
    try:
        frames.extend(capture)
    except CaptureError as exc:
        error = str(exc)
    return frames, error, capture.passed


@pytest.mark.parametrize("program", sorted(PROGRAMS))
@pytest.mark.parametrize("capture", sorted(CAPTURES))
def test_libpcap_and_pure_reader_agree(tmp_path: Path, capture: str, program: str) -> None:
    use_reader("libpcap", pytest.MonkeyPatch())  # skips without libpcap
    kind, make = CAPTURES[capture]
    path = tmp_path / f"{capture}.{kind}"
    path.write_bytes(make())
    chosen = PROGRAMS[program]
    in_c = read_all(path, chosen, True)
    pure = read_all(path, chosen, False)
    assert in_c == pure
    # And the pure one is what the interpreter passes of every frame the reader reads.
    everything: list[Frame] = []
    with contextlib.suppress(CaptureError):
        everything.extend(open_capture(path))
    assert pure[0] == [f for f in everything if bpf.run(chosen.instructions, f.data)]


def test_only_matching_records_leave_libpcap(tmp_path: Path) -> None:
    use_reader("libpcap", pytest.MonkeyPatch())
    path = tmp_path / "a.pcap"
    path.write_bytes(pcap_bytes())
    capture = open_capture(path, program=PROGRAMS["buttons"])
    frames = list(capture)
    assert capture.in_libpcap
    # 6 kinds of press x 3 tag depths, the relayed request x 3 tag depths and a stranger's
    # duplicate address detection (no option: Python decides); not the press with three tags.
    assert len(frames) == capture.passed == 22
    assert capture.read_summary() == (
        "22 packets passed the button filter (3 MACs) in libpcap")
    assert [f.timestamp for f in frames[:2]] == [T0, T0 + 0.123457]


def test_cut_file_is_finished_by_the_pure_reader(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                 ) -> None:
    use_reader("libpcap", pytest.MonkeyPatch())
    path = tmp_path / "cut.pcap"
    path.write_bytes(pcap_bytes()[:-10])
    capture = open_capture(path, program=PROGRAMS["candidates"])
    with caplog.at_level(logging.DEBUG, "dashkanban.capture"):
        list(capture)
    assert capture.cut_off == len(pcap_bytes()) - 16 - len(MIXED[-1])  # the last record's start
    assert not capture.in_libpcap  # the pure reader read it all: it knows the total
    assert capture.read_summary() == (
        f"{len(MIXED) - 1} packets read, {capture.passed} passed the candidate filter")
    assert "libpcap stopped after" in caplog.text


def test_without_libpcap_one_debug_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    use_reader("pure", monkeypatch)
    path = tmp_path / "a.pcap"
    path.write_bytes(pcap_bytes())
    capture = open_capture(path, program=PROGRAMS["buttons"])
    with caplog.at_level(logging.DEBUG, "dashkanban.capture"):
        frames = list(capture)
    assert len(frames) == 22
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", f"{path}: not read with libpcap ({MISSING}): the pure reader filters it")]
    assert capture.read_summary() == (
        f"{len(MIXED)} packets read, 22 passed the button filter (3 MACs)")


def test_library_missing_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libpcap, "NAMES", ("libpcap-does-not-exist.so.0",))
    monkeypatch.setattr(libpcap, "_library", None)
    monkeypatch.setattr(libpcap, "_missing", None)
    import ctypes.util

    monkeypatch.setattr(ctypes.util, "find_library", lambda _name: None)
    with pytest.raises(libpcap.UnavailableError, match="libpcap is not installed"):
        libpcap.library()


def test_tcpdump_agrees_on_the_sample(tmp_path: Path) -> None:
    """An independent check: tcpdump's own compiled expression for the same kinds (up to two
    tags) passes as many frames of the sample as the candidate program does in libpcap."""
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed")
    sample = DATA / "sample-store.pcapng"
    out = subprocess.run(
        ["tcpdump", "-r", str(sample), "-nn", "-q",
         "arp or (udp dst port 67) or (vlan and (arp or udp dst port 67)) or "
         "(vlan and vlan and (arp or udp dst port 67))"],
        capture_output=True, timeout=30, check=True, text=True)
    expected = len(out.stdout.splitlines())
    capture = open_capture(sample, program=bpf.candidate_program(("arp", "dhcp")))
    assert len(list(capture)) == expected


SMALL = {"pcap": pcap_bytes(), "pcapng": pcapng_bytes(9), "sections": multi_section()}


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(SMALL)),
    st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 3000),
    st.sampled_from(sorted(PROGRAMS)),
)
def test_corrupt_files_agree(tmp_path_factory: pytest.TempPathFactory, kind: str,
                             flips: list[tuple[int, int]], cut: int, program: str) -> None:
    use_reader("libpcap", pytest.MonkeyPatch())
    data = bytearray(SMALL[kind])
    for index, value in flips:
        if 4 <= index < len(data):
            data[index] = value
    path = tmp_path_factory.mktemp("corrupt") / f"x.{'pcap' if kind == 'pcap' else 'pcapng'}"
    path.write_bytes(bytes(data[: max(cut, 4)]))
    in_c = read_all(path, PROGRAMS[program], True)
    pure = read_all(path, PROGRAMS[program], False)
    if kind == "pcap" or pure[1] is None:
        assert in_c == pure
    else:
        # libpcap does not check everything the pure reader checks in a pcapng file (a block's
        # trailing length, for one) and may read on past a fault: what came before it is equal.
        assert in_c[0][: len(pure[0])] == pure[0]


def raw_epb(interface: int, ticks: int, data: bytes) -> bytes:
    body = struct.pack("<IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
                       len(data)) + data
    return forge._block(6, body, "<")


@pytest.mark.parametrize("tsresol", range(256))
def test_every_time_resolution_gives_the_same_times(tmp_path: Path, tsresol: int) -> None:
    """Every if_tsresol byte, with ticks that fill 64 bits: libpcap cuts the fraction to whole
    nanoseconds and, for 2^-35 s and finer, wraps its 64-bit product (hypothesis found one where
    the readers differed); the pure reader computes the same, so the frames are equal."""
    use_reader("libpcap", pytest.MonkeyPatch())
    ticks = (0, 1, 123_456_789, 0x187B7F9F_0BFECCCD, 0x7FFF_FFFF_FFFF_FFFF, 2**64 - 1)
    path = tmp_path / "resolution.pcapng"
    path.write_bytes(forge.pcapng_header() + forge.pcapng_interface("eth0", tsresol=tsresol)
                     + b"".join(raw_epb(0, t, MIXED[0]) for t in ticks))
    in_c = read_all(path, PROGRAMS["candidates"], True)
    pure = read_all(path, PROGRAMS["candidates"], False)
    assert in_c == pure


def test_a_resolution_finer_than_2_to_the_minus_34_wraps_as_in_libpcap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The case hypothesis found (if_tsresol 0xA3, 2^-35 s): the time is libpcap's, whose
    fraction wrapped, and the same without libpcap."""
    use_reader("pure", monkeypatch)
    ticks = 0x187B7F9F_0BFECCCD
    path = tmp_path / "fine.pcapng"
    path.write_bytes(forge.pcapng_header() + forge.pcapng_interface("eth0", tsresol=0xA3)
                     + raw_epb(0, ticks, MIXED[0]))
    [frame] = open_capture(path)
    wrapped = ((ticks % 2**35) * 10**9) % 2**64 // 2**35
    assert frame.timestamp == ticks // 2**35 + wrapped / 1e9 == 51343347.343986176
