"""A newcomer's first hour (issue 14), as real processes against a real `dashkanban sandbox`.

The path of the issue, with the exact lines a user sees: the sandbox's config block pasted as it
is, `check`, `replay` of the bundled sample capture, the same `replay` again (nothing new
queued), a wrong password (the error names what stays queued and both ways out), `outbox drop`.
Then an Excel-style MACID.csv (';', Windows-1252, a BOM, CRLF, umlauts) whose umlauts arrive
intact in Cumulocity's events.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from dashkanban.capture.live import default_interface
from dashkanban.privileges import has_cap_net_raw
from tests.file_readers import READERS, child_prefix
from tests.test_replay import DATA, EXPECTED, SAMPLE

BANNER_END = "Ctrl-C stops it."
WAYS_OUT = ("`dashkanban outbox flush` delivers them, `dashkanban outbox drop --all` (or "
            "--button NAME|MAC, --before TIME) discards them")


@dataclass
class Site:
    """The sandbox process, what its banner said, and the newcomer's folder."""

    proc: subprocess.Popen[str]
    banner: list[str]
    folder: Path
    env: dict[str, str]
    # Before each command: `child_prefix(reader)`, to run it as on a machine without libpcap.
    prefix: list[str] = field(default_factory=list)

    @property
    def rest(self) -> str:
        found = re.search(r"REST +(\S+)", "\n".join(self.banner))
        assert found is not None
        return found.group(1)

    @property
    def password(self) -> str:
        found = re.search(r"^  password  (\S+)$", "\n".join(self.banner), re.M)
        assert found is not None
        return found.group(1)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, sys.executable, "-m", "dashkanban", *args],
                              cwd=self.folder,
                              env=self.env, capture_output=True, text=True, timeout=120,
                              check=False)

    def events(self) -> list[dict[str, object]]:
        answer = httpx.get(f"{self.rest}/event/events",
                           params={"pageSize": 100, "type": "c8y_MAC_Event"},
                           auth=("t12345/admin", self.password), timeout=10)
        assert answer.status_code == 200, answer.text
        events: list[dict[str, object]] = answer.json()["events"]
        return events


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    folder = tmp_path / "newcomer"
    folder.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
        "HOME": str(tmp_path / "home"),
        # The outbox's default place; as root it would be /var/lib/dashkanban, the machine's.
        "STATE_DIRECTORY": str(tmp_path / "state"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashkanban", "sandbox", "--mqtt-port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        banner: list[str] = []
        for _ in range(60):  # bounded: the banner has about 30 lines
            line = proc.stdout.readline()
            if not line:
                break
            banner.append(line.rstrip("\n"))
            if line.strip() == BANNER_END:
                break
        assert banner[-1:] == [BANNER_END], banner
        yield Site(proc, banner, folder, env)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


def pasted_block(banner: list[str]) -> str:
    """The config block exactly as the banner shows it: from `[C8YMQTT]` to the blank line."""
    start = banner.index("  [C8YMQTT]")
    end = banner.index("", start)
    return "\n".join(banner[start:end]) + "\n"


def capture_line() -> str:
    interface = default_interface()
    if has_cap_net_raw():
        return f"✓ capture on {interface} (interface = auto: the default route's): CAP_NET_RAW held"
    return (f"✗ capture on {interface} (interface = auto: the default route's): this user lacks "
            "CAP_NET_RAW, so `run` cannot capture")


# What each reader counted of the sample (libpcap does not count what its filter skips).
SAMPLE_READ = {
    "libpcap": "162 packets passed the candidate filter in libpcap",
    "pure": "1211 packets read, 162 passed the candidate filter",
}
# The sample's presses (test_replay's EXPECTED) as Cumulocity lists them: newest first.
SAMPLE_EVENTS = [(e["type"], e["text"], e["time"][:23] + "Z") for e in reversed(EXPECTED)]


def cumulocity_view(events: list[dict[str, object]]) -> list[tuple[str, str, str]]:
    return [(str(e["type"]), str(e["text"]), str(e["time"])) for e in events]


@pytest.mark.parametrize("reader", READERS)
def test_newcomers_first_hour(site: Site, reader: str) -> None:
    site.prefix = child_prefix(reader)
    mqtt = re.search(r"MQTT +mqtt://127\.0\.0\.1:(\d+)", "\n".join(site.banner))
    assert mqtt is not None
    port = int(mqtt.group(1))
    block = pasted_block(site.banner)
    assert block == (
        "  [C8YMQTT]\n"
        "  tenant = 127.0.0.1\n"
        "  tenantID = t12345\n"
        "  user = t12345/admin\n"
        f"  password = {site.password}\n"  # the password itself, not "<the password above>"
        f"  port = {port}\n"
        "  tls = no\n"
        "  allow_insecure = yes\n"
        f"  rest_url = {site.rest}\n"
        "  [buttons]\n"
        f"  file = {DATA / 'MACID.csv'}\n"
    )
    assert f"  dashkanban replay {SAMPLE} -c config.ini" in site.banner
    config = site.folder / "config.ini"
    config.touch(mode=0o600)
    config.write_text(block)

    # check: every step the configuration needs (the sample's bins use REST), each once.
    outbox = Path(site.env["STATE_DIRECTORY"]) / "outbox.sqlite3"
    result = site.run("check", "-c", "config.ini")
    capture_ok = has_cap_net_raw()
    assert result.stdout.splitlines() == [
        "✓ config config.ini",
        f"✓ buttons {DATA / 'MACID.csv'}: 3 button(s)",
        capture_line(),
        *([] if capture_ok else ["  hint: " + _grant_hint()]),
        f"✓ outbox {outbox}: writable",
        "✓ resolve 127.0.0.1: 127.0.0.1",
        f"✓ connect 127.0.0.1:{port}",
        "! no TLS (tls = no, allow_insecure = yes): the password travels in clear text",
        f"✓ MQTT login as t12345/admin, client id dashkanban-{_host()}",
        f"✓ REST {site.rest}: logged in as t12345/admin",
        *(["✓ all checks passed: events go to 127.0.0.1 in gateway mode"] if capture_ok else []),
    ]
    assert result.returncode == (0 if capture_ok else 1), result.stderr

    # replay the bundled sample: 7 presses delivered.
    result = site.run("replay", str(SAMPLE), "-c", "config.ini")
    assert result.returncode == 0, result.stderr
    err = result.stderr.splitlines()
    # The sample has bins: replay reads it with the candidate filter, in libpcap when it is
    # installed (CI installs it), which does not count what its filter skips; else the pure
    # reader, which counts every record.
    read = SAMPLE_READ[reader]
    assert f"{SAMPLE}: {read}, 162 candidates, 0 malformed, 7 presses" in err
    assert err[0] == f"{SAMPLE}: {read}, 162 candidates, 0 malformed, 7 presses"
    assert not [line for line in err if " DEBUG " in line]  # the reader's reason is DEBUG
    assert err[-1] == "delivered 7 events to 127.0.0.1"
    assert len(site.events()) == 7
    assert cumulocity_view(site.events()) == SAMPLE_EVENTS  # the same with either reader
    # replay wrote the c8y_Kanban fragment (only `run` did), so the report from Cumulocity
    # knows the bins.
    result = site.run("kanban", "report", "--from-cumulocity", "-c", "config.ini",
                      "--since", "2026-11-01")
    assert result.returncode == 0, result.stderr
    for bin_ in ("A3", "B1", "C7"):
        assert re.search(rf"│ {bin_} +│", result.stdout), result.stdout

    # The same replay again: nothing new is queued, and it says so.
    result = site.run("replay", str(SAMPLE), "-c", "config.ini")
    assert result.returncode == 0, result.stderr
    err = result.stderr.splitlines()
    assert "7 presses, 7 already delivered: skipped (--again queues them once more)" in err
    assert err[-1] == "delivered 0 events to 127.0.0.1"
    assert len(site.events()) == 7

    # A wrong password: the error names what stays queued and both ways out.
    config.write_text(block.replace(f"password = {site.password}", "password = wrong"))
    result = site.run("replay", str(SAMPLE), "-c", "config.ini", "--again")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: 127.0.0.1:{port} refused the login for t12345/admin: bad user name or password "
        "(CONNACK 4); check user and password in [C8YMQTT]; "
        f"7 events stay queued in {outbox}: {WAYS_OUT}"
    )

    # outbox drop: what it dropped, one a line, and what is left.
    result = site.run("outbox", "drop", "--all", "-c", "config.ini")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "dropped: 2026-11-26T08:00:01.234+00:00 dashButton_1 (ac:63:be:12:34:56) c8y_MAC_Event",
        "dropped: 2026-11-26T08:05:12.500+00:00 dashButton_2 (fc:a6:67:0a:0b:0c) c8y_MAC_Event",
        "dropped: 2026-11-26T08:12:40.100+00:00 dashButton_3 (68:54:fd:01:02:03) c8y_MAC_Event",
        "dropped: 2026-11-26T08:13:05.100+00:00 dashButton_3 (68:54:fd:01:02:03) c8y_MAC_Event",
        "dropped: 2026-11-26T08:30:00.750+00:00 dashButton_1 (ac:63:be:12:34:56) c8y_MAC_Event",
        "dropped: 2026-11-26T08:45:30.000+00:00 dashButton_2 (fc:a6:67:0a:0b:0c) c8y_MAC_Event",
        "dropped: 2026-11-26T09:10:05.500+00:00 dashButton_1 (ac:63:be:12:34:56) c8y_MAC_Event",
        "outbox: dropped 7 events, 0 still queued",
    ]

    # The right password again: the dropped presses were delivered before, so nothing doubles.
    config.write_text(block)
    result = site.run("replay", str(SAMPLE), "-c", "config.ini")
    assert result.returncode == 0, result.stderr
    assert "7 presses, 7 already delivered: skipped (--again queues them once more)" in (
        result.stderr.splitlines())
    assert len(site.events()) == 7


EXCEL = (
    "Name;MAC-Address;bin;part;location\r\n"
    "Würth-Knopf;AC-63-BE-12-34-56;A3;M6 Schrauben für Möbel;Gang 2 (Süd)\r\n"
    "Dübel-Knopf;fc:a6:67:0a:0b:0c;B1;Dübel 8 mm;Gang 3\r\n"
    "Handschuhe größer;6854.fd01.0203;C7;Schutzhandschuhe L;Tor 1\r\n"
)


@pytest.mark.parametrize("reader", READERS)
def test_excel_macid_umlauts_arrive_intact(site: Site, reader: str) -> None:
    site.prefix = child_prefix(reader)
    macid = site.folder / "MACID.csv"
    macid.write_bytes(b"\xef\xbb\xbf" + EXCEL.encode("cp1252"))
    block = pasted_block(site.banner).replace(f"  file = {DATA / 'MACID.csv'}",
                                              f"  file = {macid}")
    config = site.folder / "config.ini"
    config.touch(mode=0o600)
    config.write_text(block + "[event]\ntext = {name}: {part} ({location})\n")
    result = site.run("replay", str(SAMPLE), "-c", "config.ini")
    assert result.returncode == 0, result.stderr
    # One warning, naming the file; the offset counts the BOM: 3 + 36 (the header) + 1 ('W').
    warnings = [line for line in result.stderr.splitlines() if "Windows-1252" in line]
    assert len(warnings) == 1
    assert warnings[0].endswith(
        f"{macid}: not UTF-8 (byte 0xfc at offset 40, line 2): read as Windows-1252; save it "
        'as "CSV UTF-8" to be sure')
    # 6 presses: this MACID.csv has no dead_time column, so button 3's two presses 25 s apart
    # are one at the default dead time; either reader finds the same.
    assert f"{SAMPLE}: {SAMPLE_READ[reader]}, 162 candidates, 0 malformed, 6 presses" in (
        result.stderr.splitlines())
    assert result.stderr.splitlines()[-1] == "delivered 6 events to 127.0.0.1"
    texts = sorted({str(e["text"]) for e in site.events()})
    assert texts == [
        "Dübel-Knopf: Dübel 8 mm (Gang 3)",
        "Handschuhe größer: Schutzhandschuhe L (Tor 1)",
        "Würth-Knopf: M6 Schrauben für Möbel (Gang 2 (Süd))",
    ]


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())


def _grant_hint() -> str:
    from dashkanban.privileges import grant_hint

    return grant_hint()


def sample_as(kind: str, path: Path) -> Path:
    """The bundled sample as pcap or pcapng (the same frames and times), cut inside its last
    record: 7 bytes short, as an interrupted tcpdump leaves it."""
    from dashkanban.capture import open_capture
    from tests import forge

    if kind == "pcapng":
        data = SAMPLE.read_bytes()
    else:
        frames = [(f.timestamp, f.data) for f in open_capture(SAMPLE)]
        with path.open("wb") as f:
            forge.write_pcap(f, frames, nanoseconds=True)
        data = path.read_bytes()
    path.write_bytes(data[:-7])
    return path


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_cut_off_capture_is_delivered_to_the_cut(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14: every press before the cut is queued and delivered, a warning, exit 0."""
    from dashkanban.cli import main
    from dashkanban.sandbox import Sandbox
    from tests.sandbox_fixture import sandbox_config, sandbox_options

    cut = sample_as(kind, tmp_path / f"cut.{kind}")
    with Sandbox(sandbox_options()) as sandbox:
        config = sandbox_config(tmp_path, sandbox, DATA / "MACID.csv")
        assert main(["replay", "-c", str(config), str(cut)]) == 0
        err = capsys.readouterr().err.splitlines()
        size = cut.stat().st_size
        last = [line for line in err if line.startswith("warning: ")]
        assert len(last) == 1
        offset = int(re.fullmatch(
            rf"warning: {re.escape(str(cut))}: ends inside a record at byte (\d+) "
            r"\(the capture was cut off\)", last[0]).group(1))  # type: ignore[union-attr]
        assert size - 200 < offset < size  # the last record, not some earlier spot
        assert err[-1] == "delivered 7 events to 127.0.0.1"
        with httpx.Client(base_url=sandbox.http_url, auth=("t12345/dash-gateway",
                                                           "s3cret-sandbox-pw")) as http:
            events = http.get("/event/events", params={"pageSize": 100}).json()["events"]
        assert len(events) == 7  # the cut fell after the last press


def test_corrupt_in_the_middle_delivers_what_came_before_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dashkanban.cli import main
    from dashkanban.sandbox import Sandbox
    from tests.sandbox_fixture import sandbox_config, sandbox_options

    data = bytearray(SAMPLE.read_bytes())
    block = data.index(b"\x06\x00\x00\x00", len(data) // 2)
    data[block + 4 : block + 8] = (7).to_bytes(4, "little")
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(bytes(data))
    with Sandbox(sandbox_options()) as sandbox:
        config = sandbox_config(tmp_path, sandbox, DATA / "MACID.csv")
        assert main(["replay", "-c", str(config), str(bad)]) == 1
        err = capsys.readouterr().err.splitlines()
        assert err[-1] == (f"error: {bad}: corrupt block at byte {block}: length 7; 5 presses "
                           "before it were delivered")
        with httpx.Client(base_url=sandbox.http_url, auth=("t12345/dash-gateway",
                                                           "s3cret-sandbox-pw")) as http:
            events = http.get("/event/events", params={"pageSize": 100}).json()["events"]
        assert len(events) == 5
