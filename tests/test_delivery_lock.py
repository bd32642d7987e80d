"""One carrier per outbox: while `dashkanban run` holds `<outbox>.lock`, one-shot commands only
queue (a second connection with the gateway's client id would make Cumulocity drop the daemon's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashkanban.cli import main
from dashkanban.config import load_settings
from dashkanban.outbox.store import Outbox, delivery_lock
from tests.brokers import Mosquitto
from tests.c8y.support import Recorder, write_config
from tests.test_replay import DATA, SAMPLE


def test_the_lock_has_one_holder(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with delivery_lock(path, wait=True) as daemon:
        assert daemon is True
        with delivery_lock(path, wait=False) as command:
            assert command is False
    with delivery_lock(path, wait=False) as command:
        assert command is True  # released when the holder left
    assert (tmp_path / "outbox.sqlite3.lock").stat().st_mode & 0o777 == 0o600


def test_commands_only_queue_while_the_daemon_delivers(
    tmp_path: Path, mosquitto_tls: Mosquitto, recorder: Recorder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, mosquitto_tls,
                          extra=f"[buttons]\nfile = {DATA / 'MACID.csv'}\n")
    settings = load_settings(config)
    Outbox.open(settings.outbox.path).close()
    with delivery_lock(settings.outbox.path, wait=True):  # as `dashkanban run` holds it
        assert main(["replay", "-c", str(config), str(SAMPLE)]) == 0
        assert capsys.readouterr().err.splitlines()[-1] == (
            "queued 7 events: the running dashkanban service delivers them")
        assert main(["test-button", "-c", str(config), "dashButton_1"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[1] == (f"✓ queued in {settings.outbox.path}: the running dashkanban service "
                          "delivers it")
        assert main(["outbox", "flush", "-c", str(config)]) == 0
        assert capsys.readouterr().out == (
            "outbox: 8 events queued; the running dashkanban service is delivering them\n")
    # Nothing connected meanwhile: mosquitto logs a client before its CONNACK, so a command
    # that had connected (and waited for that CONNACK) is in the log by now; and the broker saw
    # no message at all.
    connected = [line.split(" as ")[-1].split()[0] for line in
                 mosquitto_tls.log_text().splitlines() if "New client connected" in line]
    assert connected == ["test-recorder"]
    assert recorder.wait_for(1, timeout=0.5) == []
    with Outbox.open(settings.outbox.path) as outbox:
        assert outbox.count() == 8
    # Once the holder is gone, a command carries them itself.
    assert main(["outbox", "flush", "-c", str(config)]) == 0
    assert capsys.readouterr().out == "outbox: delivered 8 events\n"
