"""mqtt_buttons.battery: when a level is sent and warned about, its lines, the kept file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashkanban.detect.buttons import Button
from dashkanban.mqtt_buttons.battery import (
    BatteryFile,
    BatteryPolicy,
    Decision,
    LastLevel,
    battery_path,
    measurement_lines,
    read_levels,
    status_lines,
)

AQARA = Button(name="Bin B1, Aisle 4", mac="00:12:4b:00:1c:a1:b2:c3", topic="zigbee2mqtt/b1")
SHELLY = Button(name="shelly", mac="a4:cf:12:f4:56:78", topic="shellies/s/input_event/0")
T0 = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC)


def test_once_an_hour_per_button_and_one_warning_while_low() -> None:
    policy = BatteryPolicy()
    assert policy.report("a", 80.0, 100.0) == Decision(send=True, warn=False)
    assert policy.report("a", 79.0, 3699.0) == Decision(send=False, warn=False)
    assert policy.report("b", 14.0, 3699.0) == Decision(send=True, warn=True)
    assert policy.report("b", 13.0, 3700.0) == Decision(send=False, warn=False)
    assert policy.report("a", 14.9, 3700.0) == Decision(send=True, warn=True)
    assert policy.report("b", 100.0, 7300.0) == Decision(send=True, warn=False)  # new battery
    assert policy.report("b", 14.0, 7301.0) == Decision(send=False, warn=True)


@pytest.mark.parametrize(("levels", "warnings"), [
    ([14.0, 15.0, 14.0, 15.0, 14.0], [True, False, False, False, False]),  # wavering at 15 %
    ([14.0, 19.9, 14.0], [True, False, False]),
    ([14.0, 20.0, 14.0], [True, False, True]),  # back up to 20 %: a new battery
    ([16.0, 14.0, 20.0, 12.0], [False, True, False, True]),
])
def test_the_warning_re_arms_only_at_20_percent(levels: list[float],
                                                warnings: list[bool]) -> None:
    policy = BatteryPolicy()
    assert [policy.report("a", level, 10.0 * n).warn for n, level in enumerate(levels)] == (
        warnings)


def test_measurement_lines() -> None:
    assert measurement_lines(AQARA, 87.0, T0) == (
        (None, '101,00124b001ca1b2c3,"Bin B1, Aisle 4",c8y_DashButton'),
        ("00124b001ca1b2c3", "200,c8y_Battery,level,87,%,2026-11-26T08:00:01.234+00:00"),
    )
    assert measurement_lines(SHELLY, 4.5, T0)[1] == (
        "a4cf12f45678", "200,c8y_Battery,level,4.5,%,2026-11-26T08:00:01.234+00:00")


def test_the_last_levels_are_kept_next_to_the_outbox(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    assert read_levels(outbox) == []
    kept = BatteryFile(outbox)
    kept.record(SHELLY, 87.0, T0)
    kept.record(AQARA, 12.0, T0)
    kept.record(SHELLY, 86.0, T0)
    assert battery_path(outbox) == tmp_path / "batteries.json"
    levels = read_levels(outbox)
    assert levels == [
        LastLevel("00124b001ca1b2c3", "Bin B1, Aisle 4", 12.0, T0.replace(microsecond=0)),
        LastLevel("a4cf12f45678", "shelly", 86.0, T0.replace(microsecond=0)),
    ]
    assert status_lines(levels) == [
        "battery: Bin B1, Aisle 4 (00124b001ca1b2c3) 12 % at 2026-11-26T08:00:01+00:00 "
        "(under 15 %: replace it)",
        "battery: shelly (a4cf12f45678) 86 % at 2026-11-26T08:00:01+00:00",
    ]
    assert BatteryFile(outbox).path == battery_path(outbox)  # a restart reads them back


@pytest.mark.parametrize("text", [
    "", "not json", "[1]", '{"format": 2, "buttons": {}}', "[" * 100_000,
    '{"format": 1, "buttons": {"x": {"name": "n", "percent": "many", "time": "now"}}}',
])
def test_a_file_that_is_not_ours_reads_as_none(tmp_path: Path, text: str) -> None:
    (tmp_path / "batteries.json").write_text(text)
    assert read_levels(tmp_path / "outbox.sqlite3") == []
