"""The network `discover` table shows the last battery level the daemon kept for an MQTT button it
lists (issue 19 gaps): read from batteries.json next to the outbox, as `outbox status` does."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashkanban.cli import main
from dashkanban.compose import load_buttons
from dashkanban.mqtt_buttons.battery import BatteryFile

DATA = Path(__file__).resolve().parents[2] / "src" / "dashkanban" / "data"
SAMPLE = DATA / "sample-store.pcapng"
MACID = (
    "Name, MAC-Address, topic\n"
    "dash, ac:63:be:12:34:56,\n"
    "shelly, fc:a6:67:0a:0b:0c, shellies/shellybutton1-FCA6670A0B0C/input_event/0\n"
)


def table_rows(out: str, cells: int) -> dict[str, list[str]]:
    return {
        parts[1].strip(): [c.strip() for c in parts[2:-1]]
        for line in out.splitlines()
        if (parts := line.split("│")) and len(parts) == cells and parts[1].strip()
    }


def write_config(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "MACID.csv").write_text(MACID)
    outbox = tmp_path / "state" / "outbox.sqlite3"
    config = tmp_path / "config.ini"
    config.write_text(f"[buttons]\nfile = {tmp_path / 'MACID.csv'}\n\n[outbox]\npath = {outbox}\n")
    return config, outbox


def test_the_table_shows_a_kept_battery_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, outbox = write_config(tmp_path)
    outbox.parent.mkdir(mode=0o750)
    shelly = load_buttons(tmp_path / "MACID.csv").get("fc:a6:67:0a:0b:0c")
    assert shelly is not None
    BatteryFile(outbox).record(shelly, 12.0, datetime(2026, 11, 26, 8, 0, 1, tzinfo=UTC))
    assert main(["discover", "-c", str(config), "--pcap", str(SAMPLE)]) == 0
    rows = table_rows(capsys.readouterr().out, 10)
    assert len(rows) == 10
    assert rows["fc:a6:67:0a:0b:0c"][-2:] == ["shelly", "12 %"]
    assert rows["ac:63:be:12:34:56"][-2:] == ["dash", ""]
    assert rows["3c:22:fb:8e:41:07"][-2:] == ["", ""]


def test_without_kept_levels_the_table_has_no_battery_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = write_config(tmp_path)
    assert main(["discover", "-c", str(config), "--pcap", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "battery" not in out
    assert table_rows(out, 9)["fc:a6:67:0a:0b:0c"][-1] == "shelly"
