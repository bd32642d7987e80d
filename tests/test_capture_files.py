"""pcap and pcapng readers: both byte orders, resolutions, block kinds, and exact errors."""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashkanban import capture
from dashkanban.capture import Frame, maybe_candidate, open_capture
from dashkanban.errors import CaptureError, ConfigError
from tests import forge

T0 = 1764144000.0
ARP = forge.arp_frame(1, "ac:63:be:12:34:56", "0.0.0.0", "192.168.10.51")
TCP = forge.tcp_frame("3c:22:fb:8e:41:07", "00:0d:b9:4a:10:01", "192.168.10.31", "1.2.3.4",
                      50000, 443, payload=b"hello")
DHCP = forge.dhcp_client_frame("ac:63:be:12:34:56", forge.DISCOVER, vlans=(20,))
TAGGED = forge.tcp_frame("3c:22:fb:8e:41:07", "00:0d:b9:4a:10:01", "192.168.10.31", "1.2.3.4",
                         50000, 443, vlans=(10,))
FRAMES = [(T0 + 0.000001, ARP), (T0 + 1.5, TCP), (T0 + 2.25, DHCP)]


def write_pcap(path: Path, frames: list[tuple[float, bytes]], **kwargs: bool) -> Path:
    with path.open("wb") as f:
        forge.write_pcap(f, frames, **kwargs)
    return path


def read(path: Path, prefilter: bool = False) -> list[Frame]:
    return list(open_capture(path, prefilter=prefilter))


def test_the_pcap_magic_table_is_written_once() -> None:
    """The pure reader, open_capture and the two-halves split take capture/frame.py's
    PCAP_MAGICS: copies of it (there were three) could drift apart."""
    package = Path(capture.__file__).parent
    holders = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                     if "\\xa1\\xb2" in path.read_text(encoding="utf-8"))
    assert holders == ["frame.py"]


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanoseconds", [False, True])
def test_pcap_byte_orders_and_resolutions(
    tmp_path: Path, big_endian: bool, nanoseconds: bool
) -> None:
    path = write_pcap(tmp_path / "a.pcap", FRAMES, big_endian=big_endian, nanoseconds=nanoseconds)
    frames = read(path)
    assert [f.data for f in frames] == [ARP, TCP, DHCP]
    assert [f.timestamp for f in frames] == pytest.approx([t for t, _ in FRAMES], abs=3e-7)
    assert all(f.vlan is None for f in frames)


def test_pcap_written_by_tcpdump_is_read(tmp_path: Path) -> None:
    """An independent writer: tcpdump re-writes our file in its own (nanosecond) format."""
    source = write_pcap(tmp_path / "a.pcap", FRAMES)
    out = tmp_path / "b.pcap"
    try:
        subprocess.run(
            ["tcpdump", "-r", str(source), "-w", str(out), "--time-stamp-precision=nano"],
            check=True, capture_output=True, timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("tcpdump is not installed (scripts/system-deps.sh installs it)")
    assert out.read_bytes()[:4] == b"\x4d\x3c\xb2\xa1"
    assert [f.data for f in read(out)] == [ARP, TCP, DHCP]


def test_pcapng_from_scapy_is_read(tmp_path: Path) -> None:
    scapy = pytest.importorskip("scapy.all")
    path = tmp_path / "s.pcapng"
    packets = []
    for timestamp, data in FRAMES:
        packet = scapy.Ether(data)
        packet.time = timestamp
        packets.append(packet)
    scapy.wrpcapng(str(path), packets)
    frames = read(path)
    assert [f.data for f in frames] == [ARP, TCP, DHCP]
    assert [f.timestamp for f in frames] == pytest.approx([t for t, _ in FRAMES], abs=1e-6)


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_prefilter_skips_only_what_cannot_be_a_sighting(tmp_path: Path, kind: str) -> None:
    frames = [*FRAMES, (T0 + 3, TAGGED)]
    if kind == "pcap":
        path = write_pcap(tmp_path / "a.pcap", frames)
    else:
        path = tmp_path / "a.pcapng"
        forge.write_pcapng(path, frames)
    capture = open_capture(path, prefilter=True)
    assert [f.data for f in capture] == [ARP, DHCP]
    assert capture.frames_read == 4


def _pcapng(*blocks: bytes) -> bytes:
    return b"".join(blocks)


def test_pcapng_interfaces_resolutions_and_block_kinds(tmp_path: Path) -> None:
    path = tmp_path / "multi.pcapng"
    path.write_bytes(
        _pcapng(
            forge.pcapng_header(),
            forge.pcapng_interface("eth0"),  # microseconds (the default)
            forge.pcapng_interface("eth1", tsresol=9),  # nanoseconds
            forge.pcapng_packet(1, T0 + 0.123456789, ARP, tsresol=9),
            forge.pcapng_packet(0, T0 + 1.000001, TCP),
            forge.pcapng_simple_packet(DHCP),  # no timestamp: the previous packet's
            # a second section, big-endian, with a binary resolution (2^-10 s)
            forge.pcapng_header(big_endian=True),
            forge.pcapng_interface("wlan0", tsresol=0x80 | 10, big_endian=True),
            forge.pcapng_packet(0, T0 + 5.5, ARP, tsresol=0x80 | 10, big_endian=True),
        )
    )
    frames = read(path)
    assert [f.data for f in frames] == [ARP, TCP, DHCP, ARP]
    assert [f.timestamp for f in frames] == pytest.approx(
        [T0 + 0.123456789, T0 + 1.000001, T0 + 1.000001, T0 + 5.5], abs=1e-6
    )


def test_pcapng_skips_unknown_blocks(tmp_path: Path) -> None:
    name_resolution = struct.pack("<II", 4, 16) + b"\x00\x00\x00\x00" + struct.pack("<I", 16)
    path = tmp_path / "nrb.pcapng"
    path.write_bytes(_pcapng(forge.pcapng_header(), name_resolution, forge.pcapng_interface("e"),
                             forge.pcapng_packet(0, T0, ARP)))
    assert [f.data for f in read(path)] == [ARP]


# ---------------------------------------------------------------------------------------------
# Errors: one line, with the byte offset


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        open_capture(tmp_path / "nope.pcap")
    assert str(info.value) == f"{tmp_path / 'nope.pcap'}: no such capture file"
    assert info.value.exit_code == 2


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"GIF89a....")
    with pytest.raises(CaptureError, match=r"not a pcap or pcapng file \(starts with 47494638; "
                                           r"at byte 0\)"):
        open_capture(path)


def test_pcap_non_ethernet(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "sll.pcap", FRAMES)
    with path.open("wb") as f:
        forge.write_pcap(f, FRAMES, linktype=113)
    with pytest.raises(CaptureError, match=r"link type 113 at byte 20 is not Ethernet \(1\)"):
        read(path)


def test_pcap_truncated_record(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "cut.pcap", FRAMES)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    offset = 24 + 16 + len(ARP) + 16 + len(TCP)
    capture = open_capture(path)
    frames = list(capture)  # a cut-off file is read to the cut: no error (issue 14)
    assert [f.data for f in frames] == [ARP, TCP]  # what came before is not lost
    assert capture.cut_off == offset


def test_pcap_corrupt_length(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "bad.pcap", FRAMES)
    data = bytearray(path.read_bytes())
    at = 24 + 16 + len(ARP)
    data[at + 8 : at + 12] = struct.pack("<I", 10_000_000)
    path.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match=rf"corrupt record at byte {at}: captured length "
                                           r"10000000 exceeds 262144"):
        read(path)


def test_pcapng_corrupt_block_length(tmp_path: Path) -> None:
    header = forge.pcapng_header()
    idb = forge.pcapng_interface("eth0")
    packet = bytearray(forge.pcapng_packet(0, T0, ARP))
    packet[4:8] = struct.pack("<I", 13)
    path = tmp_path / "bad.pcapng"
    path.write_bytes(header + idb + bytes(packet))
    with pytest.raises(CaptureError, match=rf"corrupt block at byte {len(header) + len(idb)}: "
                                           r"length 13$"):
        read(path)


def test_pcapng_trailing_length_mismatch(tmp_path: Path) -> None:
    header = forge.pcapng_header() + forge.pcapng_interface("eth0")
    packet = bytearray(forge.pcapng_packet(0, T0, ARP))
    packet[-4:] = struct.pack("<I", len(packet) + 4)
    path = tmp_path / "bad.pcapng"
    path.write_bytes(header + bytes(packet))
    with pytest.raises(CaptureError, match=rf"corrupt block at byte {len(header)}: trailing "
                                           r"length differs"):
        read(path)


def test_pcapng_non_ethernet_interface(tmp_path: Path) -> None:
    header = forge.pcapng_header() + forge.pcapng_interface("any", linktype=113)
    path = tmp_path / "sll.pcapng"
    path.write_bytes(header + forge.pcapng_packet(0, T0, ARP))
    with pytest.raises(CaptureError, match=rf"interface 0 has link type 113, not Ethernet \(1\) "
                                           rf"\(packet at byte {len(header)}\)"):
        read(path)


def test_pcapng_undescribed_interface(tmp_path: Path) -> None:
    header = forge.pcapng_header() + forge.pcapng_interface("eth0")
    path = tmp_path / "x.pcapng"
    path.write_bytes(header + forge.pcapng_packet(3, T0, ARP))
    with pytest.raises(CaptureError, match=rf"packet at byte {len(header)} names interface 3, "
                                           r"which is not described"):
        read(path)


def test_pcapng_truncated(tmp_path: Path) -> None:
    header = forge.pcapng_header() + forge.pcapng_interface("eth0")
    path = tmp_path / "cut.pcapng"
    path.write_bytes(header + forge.pcapng_packet(0, T0, ARP)[:-5])
    capture = open_capture(path)
    assert list(capture) == []
    assert capture.cut_off == len(header)
    whole = tmp_path / "whole-then-cut.pcapng"
    first = forge.pcapng_packet(0, T0, ARP)
    whole.write_bytes(header + first + forge.pcapng_packet(0, T0, TCP)[:9])
    capture = open_capture(whole)
    assert [f.data for f in capture] == [ARP]
    assert capture.cut_off == len(header) + len(first)


# ---------------------------------------------------------------------------------------------
# The prefilter never drops what the decoder would count


@settings(max_examples=400)
@given(st.binary(min_size=0, max_size=120), st.sampled_from([ARP, TCP, DHCP, TAGGED, b""]))
def test_maybe_candidate_is_a_superset(noise: bytes, base: bytes) -> None:
    from dashkanban.detect.decode import Decoder

    frame = base[: len(noise)] + noise[len(base) :] if base else noise
    decoder = Decoder(("arp", "dhcp", "ndp"))
    decoder.decode(frame, T0)
    if decoder.candidates or decoder.malformed:
        assert maybe_candidate(frame, 0, len(frame))


def test_readers_stream_in_chunks(tmp_path: Path) -> None:
    """More data than one read chunk: records straddling chunk edges are joined correctly."""
    frames = [(T0 + i, forge.tcp_frame("3c:22:fb:8e:41:07", "00:0d:b9:4a:10:01", "10.0.0.1",
                                         "10.0.0.2", 1000 + i % 50000, 443,
                                         payload=bytes([i % 256]) * (i % 1400)))
              for i in range(3000)]
    buffer = io.BytesIO()
    forge.write_pcap(buffer, frames)
    assert len(buffer.getvalue()) > 2 * (1 << 20)
    path = tmp_path / "big.pcap"
    path.write_bytes(buffer.getvalue())
    assert [f.data for f in read(path)] == [d for _, d in frames]
    ng = tmp_path / "big.pcapng"
    forge.write_pcapng(ng, frames)
    assert [f.data for f in read(ng)] == [d for _, d in frames]


def _sample_files() -> dict[str, bytes]:
    buffer = io.BytesIO()
    forge.write_pcap(buffer, FRAMES)
    ng = (
        forge.pcapng_header()
        + forge.pcapng_interface("eth0", tsresol=9)
        + forge.pcapng_packet(0, T0, ARP, tsresol=9)
        + forge.pcapng_simple_packet(TCP)
        + forge.pcapng_packet(0, T0 + 1, DHCP, tsresol=9)
    )
    return {"pcap": buffer.getvalue(), "pcapng": ng}


SAMPLES = _sample_files()


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(SAMPLES)),
    st.lists(st.tuples(st.integers(0, 1200), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 1200),
    st.booleans(),
)
def test_corrupt_files_raise_only_capture_error(
    tmp_path_factory: pytest.TempPathFactory, kind: str, flips: list[tuple[int, int]], cut: int,
    prefilter: bool,
) -> None:
    data = bytearray(SAMPLES[kind])
    for index, value in flips:
        if 4 <= index < len(data):  # keep the magic: the reader, not the sniffing, is tested
            data[index] = value
    path = tmp_path_factory.mktemp("corrupt") / f"x.{kind}"
    path.write_bytes(bytes(data[: max(cut, 4)]))
    try:
        frames = list(open_capture(path, prefilter=prefilter))
    except CaptureError as exc:
        message = str(exc)
        assert message.startswith(str(path))
        assert "\n" not in message
    else:
        assert all(isinstance(f.data, bytes) and len(f.data) <= 262144 for f in frames)
