"""`dashkanban replay`: the bundled sample capture gives exactly the presses put into it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dashkanban.cli import main
from tests import forge
from tests.file_readers import MISSING, READERS, child_prefix, use_reader

DATA = Path(__file__).resolve().parent.parent / "src" / "dashkanban" / "data"
SAMPLE = DATA / "sample-store.pcapng"
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_sample_capture.py"


def event(time: str, n: int, mac: str, trigger: str) -> dict[str, str]:
    return {
        "time": time,
        "mac": mac,
        "serial": mac.replace(":", ""),
        "name": f"dashButton_{n}",
        "type": "c8y_MAC_Event",
        "text": f"dashButton_{n} pressed ({mac})",
        "trigger": trigger,
        "kind": "single",
    }


B1, B2, B3 = "ac:63:be:12:34:56", "fc:a6:67:0a:0b:0c", "68:54:fd:01:02:03"
EXPECTED = [
    event("2026-11-26T08:00:01.234000+00:00", 1, B1, "dhcp"),  # + a second burst at +17 s
    event("2026-11-26T08:05:12.500000+00:00", 2, B2, "arp"),  # behind VLAN 20
    event("2026-11-26T08:12:40.100000+00:00", 3, B3, "dhcp"),  # relayed: Ethernet src = relay
    event("2026-11-26T08:13:05.100000+00:00", 3, B3, "arp"),  # 25 s later, its dead_time is 20
    event("2026-11-26T08:30:00.750000+00:00", 1, B1, "arp"),
    event("2026-11-26T08:45:30.000000+00:00", 2, B2, "dhcp"),
    event("2026-11-26T09:10:05.500000+00:00", 1, B1, "dhcp"),
]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.ini"
    path.write_text(
        "[C8YMQTT]\ntenant = example.cumulocity.com\ntenantID = t12345\n"
        "user = t12345/dash-gateway\npassword = secret\n\n"
        f"[buttons]\nfile = {DATA / 'MACID.csv'}\n"
    )
    path.chmod(0o600)
    return path


# `[buttons] source = csv`: only the 3 buttons' frames pass the filter (issue 16), so the
# summary says so instead of "1211 packets read, 162 candidates"; libpcap does not count the
# frames its filter skips.
READ = {
    "libpcap": "34 packets passed the button filter (3 MACs) in libpcap",
    "pure": "1211 packets read, 34 passed the button filter (3 MACs)",
}


@pytest.mark.parametrize("reader", READERS)
def test_sample_jsonl_is_exact(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    use_reader(reader, monkeypatch)
    code = main(["replay", "-c", str(config), str(SAMPLE), "--dry-run", "--jsonl"])
    out, err = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    assert [json.loads(line) for line in lines] == EXPECTED
    assert list(json.loads(lines[0])) == ["time", "mac", "serial", "name", "type", "text",
                                          "trigger", "kind"]
    assert err.splitlines()[-1] == (
        f"{SAMPLE}: {READ[reader]}, 34 candidates, 0 malformed, 7 presses"
    )


def test_sample_capture_is_reproducible(tmp_path: Path) -> None:
    out = tmp_path / "again.pcapng"
    subprocess.run([sys.executable, str(SCRIPT), str(out)], check=True, capture_output=True,
                   timeout=60)
    assert out.read_bytes() == SAMPLE.read_bytes()
    assert SAMPLE.stat().st_size < 300_000


@pytest.mark.parametrize("reader", READERS)
def test_table(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    use_reader(reader, monkeypatch)
    assert main(["replay", "-c", str(config), str(SAMPLE), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == (
        f"{SAMPLE}: {READ[reader]}, 34 candidates, 0 malformed, 7 presses"
    )
    rows = [line for line in out.splitlines() if "pressed (" in line]
    assert len(rows) == 7
    assert rows[0].split("│")[1:6] == [
        " 2026-11-26 08:00:01.234 ", " dashButton_1 ", " ac:63:be:12:34:56 ", " dhcp    ",
        " dashButton_1 pressed (ac:63:be:12:34:56) ",
    ]


@pytest.mark.parametrize("reader", READERS)
def test_detect_arp_only(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    use_reader(reader, monkeypatch)
    config.write_text(config.read_text() + "\n[capture]\ndetect = arp\n")
    assert main(["replay", "-c", str(config), str(SAMPLE), "--dry-run", "--jsonl"]) == 0
    out, err = capsys.readouterr()
    got = [json.loads(line) for line in out.splitlines()]
    # Only ARP is detected: the program passes the buttons' ARP frames alone.
    read = {
        "libpcap": "20 packets passed the button filter (3 MACs) in libpcap",
        "pure": "1211 packets read, 20 passed the button filter (3 MACs)",
    }
    assert err.splitlines()[-1] == (
        f"{SAMPLE}: {read[reader]}, 20 candidates, 0 malformed, 5 presses"
    )
    # The first ARP of each press. The relayed press and the last one send only DHCP.
    assert [(e["time"][11:23], e["name"], e["trigger"]) for e in got] == [
        ("08:00:01.900", "dashButton_1", "arp"),
        ("08:05:12.500", "dashButton_2", "arp"),
        ("08:13:05.100", "dashButton_3", "arp"),
        ("08:30:00.750", "dashButton_1", "arp"),
        ("08:45:30.600", "dashButton_2", "arp"),
    ]


@pytest.mark.parametrize("reader", READERS)
def test_cut_off_capture_is_read_to_the_cut(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    """Issue 14: a file cut off in its last record is a warning and exit 0 (it was exit 1)."""
    use_reader(reader, monkeypatch)
    data = SAMPLE.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) // 2 + 3])
    assert main(["replay", "-c", str(config), str(cut), "--dry-run", "--jsonl"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == EXPECTED[:5]
    lines = err.splitlines()
    # Both readers print the same: libpcap stops at the cut and the pure reader reads the file
    # again (skipping the frames already passed), so every record read is counted.
    assert lines[-2] == (f"{cut}: 604 packets read, 27 passed the button filter (3 MACs), "
                         "27 candidates, 0 malformed, 5 presses")
    assert re.fullmatch(
        rf"warning: {re.escape(str(cut))}: ends inside a record at byte \d+ "
        r"\(the capture was cut off\)", lines[-1])


@pytest.mark.parametrize("reader", READERS)
def test_corrupt_capture_loses_nothing(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    use_reader(reader, monkeypatch)
    data = bytearray(SAMPLE.read_bytes())
    half = len(data) // 2
    block = data.index(b"\x06\x00\x00\x00", half)  # an enhanced packet block in the middle
    data[block + 4 : block + 8] = (7).to_bytes(4, "little")  # a length that is no block's
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(bytes(data))
    assert main(["replay", "-c", str(config), str(bad), "--dry-run", "--jsonl"]) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == EXPECTED[:5]
    lines = err.splitlines()
    # As with a cut-off file, the pure reader takes over from libpcap and counts every record.
    assert lines[-2] == (f"{bad}: 605 packets read, 27 passed the button filter (3 MACs), "
                         "27 candidates, 0 malformed, 5 presses")
    assert lines[-1] == f"error: {bad}: corrupt block at byte {block}: length 7"


def test_missing_capture(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "-c", str(config), str(tmp_path / "x.pcap"), "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {tmp_path / 'x.pcap'}: no such capture file"
    )


@pytest.mark.parametrize("reader", READERS)
def test_malformed_frames_are_counted(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    use_reader(reader, monkeypatch)
    good = forge.dhcp_client_frame(B1, forge.DISCOVER)
    no_cookie = forge.udp_frame(B1, forge.BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67,
                                forge.dhcp(1, B1, forge.DISCOVER, cookie=b"\x00" * 4))
    path = tmp_path / "m.pcap"
    with path.open("wb") as f:
        forge.write_pcap(f, [(1.0, b"\x00" * 5), (2.0, no_cookie), (3.0, good)])
    assert main(["replay", "-c", str(config), str(path), "--dry-run", "--jsonl"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["time"] for line in out.splitlines()] == [
        "1970-01-01T00:00:03.000000+00:00"
    ]
    # The 5-byte frame names no button: the button filter drops it (issue 16). libpcap does
    # not count what its filter skips; the pure reader counts every record it read.
    read = {
        "libpcap": "2 packets passed the button filter (3 MACs) in libpcap",
        "pure": "3 packets read, 2 passed the button filter (3 MACs)",
    }
    assert err.splitlines()[-1] == (
        f"{path}: {read[reader]}, 2 candidates, 1 malformed, 1 presses")


@pytest.mark.parametrize("reader", READERS)
def test_console_script(config: Path, reader: str) -> None:
    """The installed command, on a machine with libpcap and on one without: the same presses;
    without it, one DEBUG line says why the pure reader filters the file."""
    exe = shutil.which("dashkanban", path=str(Path(sys.executable).parent))
    assert exe is not None
    result = subprocess.run([*child_prefix(reader), exe, "--log-level", "debug", "replay", "-c",
                             str(config), str(SAMPLE), "--dry-run", "--jsonl"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert [json.loads(line) for line in result.stdout.splitlines()] == EXPECTED
    lines = [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", line)
             for line in result.stderr.splitlines()]
    why = [f"DEBUG   dashkanban.capture: {SAMPLE}: not read with libpcap ({MISSING}): the pure "
           "reader filters it"]
    assert lines == [
        *(why if reader == "pure" else []),
        f"{SAMPLE}: {READ[reader]}, 34 candidates, 0 malformed, 7 presses",
    ]


def test_a_dry_run_loads_no_network_or_outbox_modules(config: Path) -> None:
    """A replay's start-up is a good part of its time (docs/capture.md, "Replay in two halves"):
    a dry run needs neither the live capture (asyncio, ssl) nor the outbox, and loads none of
    them (a module-level import in capture/filters.py once pulled in the first two). sqlite3
    itself is not checked: coverage, which measures this child in CI, keeps its data in it."""
    probe = (
        "import sys\n"
        "from dashkanban.cli import main\n"
        f"code = main(['replay', '-c', {str(config)!r}, {str(SAMPLE)!r}, '--dry-run', '--jsonl'])\n"
        "print(code, sorted(m for m in ('asyncio', 'ssl', 'dashkanban.capture.live',"
        " 'dashkanban.outbox.store') if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.stderr.splitlines()[-1] == "0 []"
    assert [json.loads(line) for line in result.stdout.splitlines()] == EXPECTED
