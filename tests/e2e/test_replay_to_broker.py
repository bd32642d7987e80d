"""`dashkanban replay CAPTURE` without --dry-run: the bundled sample, through the outbox and the
uplink, over TLS to a real mosquitto; a separate subscriber sees the contract's exact sequence."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashkanban.cli import main
from tests.brokers import Mosquitto
from tests.c8y.support import Recorder, write_config
from tests.e2e.sample_contract import SERIALS, event_line, gateway_sequence
from tests.test_replay import DATA, EXPECTED, SAMPLE


def config_for(tmp_path: Path, broker: Mosquitto, mode: str) -> Path:
    return write_config(tmp_path, broker, mode=mode,
                        extra=f"[buttons]\nfile = {DATA / 'MACID.csv'}\n")


def test_gateway_mode_sends_the_contract_sequence(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = config_for(tmp_path, mosquitto_tls, "gateway")
    assert main(["replay", "-c", str(config), str(SAMPLE), "--jsonl"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == len(EXPECTED)
    assert err.splitlines()[-1] == "delivered 7 events to 127.0.0.1"
    expected = gateway_sequence()
    assert recorder.wait_for(len(expected)) == expected


def test_per_device_mode_uses_one_client_per_button(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = config_for(tmp_path, mosquitto_tls, "per-device")
    assert main(["replay", "-c", str(config), str(SAMPLE)]) == 0
    capsys.readouterr()
    events = EXPECTED
    messages = recorder.wait_for(len(events) + 2 * len(SERIALS))
    # Each button has its own connection (client id = its serial): 100 and 500, then its events
    # in press order, all on s/us. Connections interleave, so order is asserted per button.
    hellos = [payload for _, payload in messages if payload.startswith("100,")]
    assert sorted(hellos) == sorted(f"100,{name},c8y_DashButton" for name in SERIALS)
    assert [payload for _, payload in messages].count("500") == len(SERIALS)
    event_lines = [payload for topic, payload in messages if payload.startswith("400,")]
    assert sorted(event_lines) == sorted(
        event_line(e) for e in events
    )
    assert all(topic == "s/us" for topic, _ in messages)
    for name in SERIALS:
        mine = [p for p in event_lines if f"{name} pressed" in p]
        assert mine == [event_line(e)
                        for e in events if e["name"] == name]


def test_unreachable_broker_exits_3_and_keeps_the_events(
    tmp_path: Path, mosquitto_tls: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_for(tmp_path, mosquitto_tls, "gateway")
    mosquitto_tls.stop()
    assert main(["replay", "-c", str(config), str(SAMPLE), "--timeout", "0.5"]) == 3
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "; 7 events stay queued in " + str(tmp_path / "outbox.sqlite3") + ": `dashkanban outbox "
        "flush` delivers them, `dashkanban outbox drop --all` (or --button NAME|MAC, --before "
        "TIME) discards them")
    assert main(["outbox", "status", "-c", str(config)]) == 0
    assert "queued: 7 events" in capsys.readouterr().out
    mosquitto_tls.start()
    assert main(["outbox", "flush", "-c", str(config)]) == 0
    assert capsys.readouterr().out == "outbox: delivered 7 events\n"
