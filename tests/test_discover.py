"""`dashkanban discover --pcap`: devices, vendors, known buttons, MACID.csv rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashkanban.cli import main
from dashkanban.commands.discover import Census, csv_name, how_seen
from dashkanban.detect.buttons import Button, Registry
from dashkanban.detect.decode import Sighting
from dashkanban.detect.vendors import is_amazon, vendor_of
from tests.file_readers import READERS, use_reader

DATA = Path(__file__).resolve().parent.parent / "src" / "dashkanban" / "data"
SAMPLE = DATA / "sample-store.pcapng"


def test_census_and_how_seen() -> None:
    census = Census(max_devices=2)
    census.add(Sighting("ac:63:be:12:34:56", "arp", 5.0, None, "10.0.0.5"))
    census.add(Sighting("ac:63:be:12:34:56", "dhcp", 3.0, 20, None, "dash", "AmazonDash"))
    census.add(Sighting("3c:22:fb:8e:41:07", "ndp", 4.0, None, "fe80::1"))
    census.add(Sighting("00:0b:82:01:fc:42", "arp", 6.0, None, None))  # beyond the bound
    device = census.devices["ac:63:be:12:34:56"]
    assert (device.first, device.last, device.count, device.vlan, device.ip) == (
        3.0, 5.0, 2, 20, "10.0.0.5"
    )
    assert how_seen(device) == "dhcp (dash), arp"
    assert how_seen(census.devices["3c:22:fb:8e:41:07"]) == "ndp"
    assert census.dropped == 1


def test_csv_names_are_unique() -> None:
    census = Census()
    census.add(Sighting("ac:63:be:12:34:56", "dhcp", 1.0, None, None, "my host!"))
    census.add(Sighting("fc:a6:67:0a:0b:0c", "arp", 1.0, None, None))
    taken = {"my_host_"}
    names = [csv_name(d, taken) for d in census.devices.values()]
    assert names == ["my_host__2", "button_0a0b0c"]


def test_vendors_offline() -> None:
    assert vendor_of("ac:63:be:12:34:56") == "Amazon Technologies Inc."
    assert vendor_of("b8:27:eb:3d:52:c0") == "Raspberry Pi Foundation"
    assert vendor_of("02:11:22:33:44:55") is None  # locally administered
    assert is_amazon(vendor_of("fc:a6:67:0a:0b:0c"))
    assert not is_amazon(vendor_of("3c:22:fb:8e:41:07"))


# The candidate program passes 174 of the sample's 1211 frames; libpcap does not count the
# frames its filter skips, the pure reader (libpcap not installed) counts every record it read.
READ = {
    "libpcap": "174 packets passed the candidate filter in libpcap",
    "pure": "1211 packets read, 174 passed the candidate filter",
}


@pytest.mark.parametrize("reader", READERS)
def test_discover_csv_without_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    reader: str
) -> None:
    use_reader(reader, monkeypatch)
    monkeypatch.chdir(tmp_path)  # no ./config.ini here
    if Path("/etc/dashkanban/config.ini").exists():
        pytest.skip("a system config exists")
    assert main(["discover", "--pcap", str(SAMPLE), "--csv"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "Name, MAC-Address",
        "button_123456,ac:63:be:12:34:56",  # Amazon's first
        "button_0a0b0c,fc:a6:67:0a:0b:0c",
        "button_010203,68:54:fd:01:02:03",
        "iPhone-Kasse,3c:22:fb:8e:41:07",
        "DESKTOP-7Q2LK4M,9c:b6:d0:4f:2d:11",
        "MacBook-Filiale,f8:ff:c2:19:72:3a",
        "iPad-Lager,a4:83:e7:05:6b:e2",
        "raspberrypi,b8:27:eb:3d:52:c0",
        "button_4a1001,00:0d:b9:4a:10:01",
        "label-printer,00:e0:4c:68:01:9a",
    ]
    assert err.splitlines()[-1] == f"10 devices, {READ[reader]}, 0 malformed"


def test_discover_table_marks_known_buttons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.ini"
    config.write_text(
        "[C8YMQTT]\ntenant = example.cumulocity.com\ntenantID = t12345\nuser = u\n"
        f"password = pw\n[buttons]\nfile = {DATA / 'MACID.csv'}\n"
    )
    config.chmod(0o600)
    assert main(["discover", "-c", str(config), "--pcap", str(SAMPLE)]) == 0
    rows = {
        cells[1].strip(): [c.strip() for c in cells[2:-1]]
        for line in capsys.readouterr().out.splitlines()
        if (cells := line.split("│")) and len(cells) == 9 and cells[1].strip()
    }
    assert rows["ac:63:be:12:34:56"] == [
        "Amazon Technologies Inc.", "dhcp (AmazonDash), arp", "19", "2026-11-26 08:00:01",
        "2026-11-26 09:10:23", "dashButton_1",
    ]
    assert rows["fc:a6:67:0a:0b:0c"][1:] == [
        "dhcp, arp vlan 20", "9", "2026-11-26 08:05:12", "2026-11-26 08:45:31", "dashButton_2"
    ]
    assert rows["3c:22:fb:8e:41:07"][0] == "Apple, Inc."
    assert rows["3c:22:fb:8e:41:07"][-1] == ""
    assert len(rows) == 10
    assert Registry([Button("x", "ac:63:be:12:34:56")]).get("ac:63:be:12:34:56") is not None


def test_table_at_80_columns_never_cuts_mac_or_name() -> None:
    """Issue 14: in an 80-column terminal the MAC was cut to `ac:63:be…`."""
    import io

    from dashkanban.capture import open_capture
    from dashkanban.commands.discover import print_table
    from dashkanban.compose import load_buttons
    from dashkanban.detect.decode import TRIGGERS, Decoder

    decoder, census = Decoder(TRIGGERS), Census()
    for frame in open_capture(SAMPLE, prefilter=True):
        sighting = decoder.decode(frame.data, frame.timestamp, frame.vlan)
        if sighting is not None:
            census.add(sighting)
    out = io.StringIO()
    print_table(census.devices.values(), load_buttons(DATA / "MACID.csv"), out, width=80)
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    first = [cells[1].strip() for line in lines
             if (cells := line.split("│")) and len(cells) == 8 and cells[1].strip()]
    assert first == [d.mac for d in census.devices.values()]  # every MAC whole
    text = out.getvalue()
    assert "…" not in text
    for name in ("dashButton_1", "dashButton_2", "dashButton_3"):
        assert f"│{name}│" in text


def test_add_to_appends_without_a_second_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`discover --add-to` keeps the file's delimiter, encoding and line ends (an Excel file:
    ';', Windows-1252, CRLF) and adds only devices not listed yet (issue 14)."""
    monkeypatch.chdir(tmp_path)
    macid = tmp_path / "MACID.csv"
    before = "Name;MAC-Address\r\nWürth;ac:63:be:12:34:56\r\n".encode("cp1252")
    macid.write_bytes(before)
    assert main(["discover", "--pcap", str(SAMPLE), "--add-to", str(macid)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "added: button_0a0b0c, fc:a6:67:0a:0b:0c"
    assert out[-1] == f"{macid}: 9 devices added, 1 listed before"
    data = macid.read_bytes()
    assert data.startswith(before)
    assert data[len(before):].decode("ascii").split("\r\n")[:2] == [
        "button_0a0b0c;fc:a6:67:0a:0b:0c", "button_010203;68:54:fd:01:02:03"
    ]
    assert data.count(b"MAC-Address") == 1
    # Run again: nothing new, the file is unchanged.
    assert main(["discover", "--pcap", str(SAMPLE), "--add-to", str(macid)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{macid}: 0 devices added, 10 listed before"]
    assert macid.read_bytes() == data


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_discover_shows_what_a_cut_off_capture_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    from tests import forge

    monkeypatch.chdir(tmp_path)
    frame = forge.dhcp_client_frame("ac:63:be:12:34:56", forge.DISCOVER)
    path = tmp_path / f"cut.{kind}"
    with path.open("wb") as f:
        if kind == "pcap":
            forge.write_pcap(f, [(1.0, frame), (2.0, frame)])
        else:
            f.write(forge.pcapng_header() + forge.pcapng_interface("eth0")
                    + forge.pcapng_packet(0, 1.0, frame)
                    + forge.pcapng_packet(0, 2.0, frame))
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    assert main(["discover", "--pcap", str(path), "--csv"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["Name, MAC-Address", "button_123456,ac:63:be:12:34:56"]
    last = len(frame) + 16 if kind == "pcap" else len(forge.pcapng_packet(0, 2.0, frame))
    cut = len(data) - last
    assert err.splitlines()[-1] == (
        f"warning: {path}: ends inside a record at byte {cut} (the capture was cut off)")


def test_discover_empty_names_likely_causes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests import forge

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "empty.pcap"
    with path.open("wb") as f:
        forge.write_pcap(f, [])
    assert main(["discover", "--pcap", str(path)]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"no devices in {path}: it holds no ARP, DHCP or IPv6 neighbour discovery packets (was "
        "it captured with a filter, or on another network?)")
