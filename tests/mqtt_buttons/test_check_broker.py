"""`dashkanban check`'s button broker step, against a real mosquitto with a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashkanban.commands.check import _check_button_broker
from dashkanban.config import Settings, load_settings
from tests.brokers import Mosquitto, free_port
from tests.conftest import BROKER_PASSWORD, BROKER_USER


def settings_for(tmp_path: Path, port: int, password: str) -> Settings:
    config = tmp_path / "config.ini"
    config.write_text(f"[mqtt_buttons]\nport = {port}\nuser = {BROKER_USER}\n"
                      f"password = {password}\n")
    config.chmod(0o600)
    return load_settings(config, uplink=False)


def test_logged_in(tmp_path: Path, mosquitto_password: Mosquitto,
                   capsys: pytest.CaptureFixture[str]) -> None:
    assert _check_button_broker(settings_for(tmp_path, mosquitto_password.port, BROKER_PASSWORD))
    assert capsys.readouterr().out == (
        f"✓ button broker 127.0.0.1:{mosquitto_password.port}: logged in as {BROKER_USER}\n")


def test_refused(tmp_path: Path, mosquitto_password: Mosquitto,
                 capsys: pytest.CaptureFixture[str]) -> None:
    assert not _check_button_broker(settings_for(tmp_path, mosquitto_password.port, "wrong-pw"))
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"✗ button broker 127.0.0.1:{mosquitto_password.port}: refused the login as "
        f"{BROKER_USER} ([code:135] Not authorized)",
        "  hint: check [mqtt_buttons] user and password (or password_file)",
    ]
    assert "wrong-pw" not in out


def test_nothing_listening(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert not _check_button_broker(settings_for(tmp_path, port, "pw"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"✗ button broker 127.0.0.1:{port}: ")
    assert lines[1] == ("  hint: check [mqtt_buttons] host, port and tls, and that the broker "
                        "runs")
