"""`[mqtt_buttons]`: the button broker's settings, with [C8YMQTT]'s password rules (issue 19)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashkanban.config import MqttButtonsSettings, load_settings
from dashkanban.errors import ConfigError
from tests.test_config import GOOD, error_of, write


def test_absent_or_empty_means_no_mqtt_source(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, GOOD), {}).mqtt_buttons is None
    assert load_settings(write(tmp_path, GOOD + "[mqtt_buttons]\n"), {}).mqtt_buttons is None


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD + "[mqtt_buttons]\ntls = no\n"), {})
    assert settings.mqtt_buttons == MqttButtonsSettings(
        host="127.0.0.1", port=1883, tls=False, user=None, password=None, ca_file=None)


def secret_file(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    (tmp_path / name).chmod(0o600)


NO_PASSWORD_HERE = GOOD.replace("password = secret", "password_file = c8y.pw")


def test_tls_user_password_file_and_ca(tmp_path: Path) -> None:
    secret_file(tmp_path, "c8y.pw", "x")
    secret_file(tmp_path, "buttons.pw", "b-pw\n")
    path = write(tmp_path, NO_PASSWORD_HERE + "[mqtt_buttons]\nhost = broker.local\ntls = yes\n"
                 "user = dashkanban\npassword_file = buttons.pw\nca_file = ca.pem\n", mode=0o644)
    found = load_settings(path, {}).mqtt_buttons
    assert found is not None
    assert (found.host, found.port, found.tls, found.user, found.ca_file) == (
        "broker.local", 8883, True, "dashkanban", tmp_path / "ca.pem")
    assert found.password is not None
    assert found.password.reveal() == "b-pw"
    assert "b-pw" not in repr(found)


def test_a_password_in_a_loose_config_is_refused(tmp_path: Path) -> None:
    secret_file(tmp_path, "c8y.pw", "x")
    path = write(tmp_path, NO_PASSWORD_HERE + "[mqtt_buttons]\nuser = u\npassword = b-pw\n",
                 mode=0o644)
    message = error_of(path)
    assert message == (f"{path}:9: {path} holds a password but is readable by group or others "
                       f"(mode 0644); fix it with: chmod 600 {path}")
    assert "b-pw" not in message


@pytest.mark.parametrize(("section", "line", "message"), [
    ("port = 70000", 8, "port = 70000: out of range (1 to 65535)"),
    ("tls = maybe", 8, "tls = maybe: expected yes or no"),
    ("host = mqtt://x", 8, "host = mqtt://x: expected a host name or address, e.g. 127.0.0.1"),
    ("password = pw", 8, "a password needs a user"),
    ("ca_file = ca.pem", 8, "ca_file is for tls = yes"),
    ("user = u\npassword = a\npassword_file = f", 10,
     "give either password or password_file, not both"),
    ("hots = x", 8, "unknown key 'hots' in [mqtt_buttons] (did you mean 'host'?)"),
])
def test_errors_name_the_line(tmp_path: Path, section: str, line: int, message: str) -> None:
    path = write(tmp_path, GOOD + "[mqtt_buttons]\n" + section + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert str(info.value) == f"{path}:{line}: {message}"
