"""The password never shows: not in --help, not in `check` output, not in debug logs, not in the
text of any config error, whichever of its three sources (password, password_file,
$DASHKANBAN_PASSWORD) holds it. Runs against a real mosquitto that knows the password, so that once
`check` tries the uplink it logs in for real and its output is still grepped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dashkanban.cli import build_parser, main
from dashkanban.config import PASSWORD_ENV
from tests.brokers import Mosquitto
from tests.conftest import BROKER_PASSWORD
from tests.test_cli import COMMANDS

BUTTONS = "Name, MAC-Address\ndashButton_1,ac:63:be:12:34:56\n"


def site(folder: Path, broker_port: int, source: str) -> tuple[Path, dict[str, str]]:
    """A config for the test broker with the password in `source`; the environment to run with."""
    password_line = {
        "inline": f"password = {BROKER_PASSWORD}",
        "file": "password_file = secret.txt",
        "env": "",
    }[source]
    folder.mkdir(exist_ok=True)
    (folder / "MACID.csv").write_text(BUTTONS)
    secret = folder / "secret.txt"
    secret.write_text(BROKER_PASSWORD + "\n")
    secret.chmod(0o600)
    config = folder / "config.ini"
    config.write_text(
        "[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = t12345/dash-gateway\n"
        f"{password_line}\nport = {broker_port}\ntls = no\nallow_insecure = yes\n"
        "rest_url = http://127.0.0.1:9\n"
    )
    config.chmod(0o600)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    if source == "env":
        env[PASSWORD_ENV] = BROKER_PASSWORD
    return config, env


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_help_never_shows_the_password(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    site(tmp_path, 1883, "inline")  # a ./config.ini holding it, in the working folder
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(PASSWORD_ENV, BROKER_PASSWORD)
    words = [w for w in command if w not in ("x.pcap", "b1", "A3")]
    for argv in ([*words, "--help"], ["--help"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        out = capsys.readouterr()
        assert out.out.startswith("usage: dashkanban")
        assert BROKER_PASSWORD not in out.out + out.err


@pytest.mark.parametrize("source", ["inline", "file", "env"])
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_check_output_and_debug_log_never_show_the_password(
    mosquitto_password: Mosquitto, tmp_path: Path, source: str, log_format: str
) -> None:
    config, env = site(tmp_path / "site", mosquitto_password.port, source)
    result = subprocess.run(
        [sys.executable, "-m", "dashkanban", "--log-level", "debug", "--log-format", log_format,
         "check", "-c", str(config)],
        capture_output=True, text=True, check=False, timeout=60, env=env,
    )
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"✓ config {config}", f"✓ buttons {tmp_path / 'site' / 'MACID.csv'}: 1 "
                         "button(s)"], result.stderr
    assert BROKER_PASSWORD not in result.stdout + result.stderr


def test_a_password_in_the_environment_is_not_inherited_into_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = site(tmp_path, 1883, "env")
    config.write_text(config.read_text().replace("port = 1883", "port = none"))
    monkeypatch.setenv(PASSWORD_ENV, BROKER_PASSWORD)
    assert main(["--log-level", "debug", "check", "-c", str(config)]) == 2
    out = capsys.readouterr()
    assert out.err == f"error: {config}:6: port = none: not a whole number\n"


PW = BROKER_PASSWORD
BASE = "[C8YMQTT]\ntenant = example.cumulocity.com\ntenantID = t12345\nuser = u\n"


@pytest.mark.parametrize(
    ("text", "mode", "secret_bytes", "message"),
    [
        (BASE + f"password = {PW}\n", 0o644, None,
         "{cfg}:5: {cfg} holds a password but is readable by group or others (mode 0644); "
         "fix it with: chmod 600 {cfg}"),
        # configparser's continuation line: the password stands alone on a line.
        (BASE + f"password =\n    {PW}\n", 0o600, None, "{cfg}:6: expected 'key = value'"),
        # configparser's other separator.
        (BASE + f"password: {PW}\n", 0o600, None,
         "{cfg}:5: expected 'key = value'; use '=' rather than ':'"),
        (BASE + f"password = {PW}\npassword_file = pw.txt\n", 0o600, PW.encode(),
         "{cfg}:6: give either password or password_file, not both"),
        (BASE + "password_file = pw.txt\n", 0o600, b"\xff" + PW.encode(),
         "{cfg}:5: password_file {dir}/pw.txt is not UTF-8 text"),
        (BASE + f"password = {PW}\nport = 1883\n", 0o600, None,
         "{cfg}:6: port 1883 is plain MQTT but tls = yes; use port 8883, or set tls = no and "
         "allow_insecure = yes"),
        (BASE + f"password = {PW}\npasword = {PW}\n", 0o600, None,
         "{cfg}:6: unknown key 'pasword' in [C8YMQTT] (did you mean 'password'?)"),
        (BASE + f"password = {PW}\n[gateway\n", 0o600, None,
         "{cfg}:6: a section header needs a closing ']'"),
    ],
    ids=["loose", "continuation", "colon", "both", "not-utf8", "port", "typo", "bracket"],
)
def test_config_errors_never_show_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    text: str, mode: int, secret_bytes: bytes | None, message: str,
) -> None:
    config = tmp_path / "config.ini"
    config.write_text(text)
    config.chmod(mode)
    if secret_bytes is not None:
        (tmp_path / "pw.txt").write_bytes(secret_bytes)
        (tmp_path / "pw.txt").chmod(0o600)
    assert main(["--log-level", "debug", "check", "-c", str(config)]) == 2
    out = capsys.readouterr()
    assert out.err == "error: " + message.format(cfg=config, dir=tmp_path) + "\n"
    assert PW not in out.out + out.err


def test_loose_password_file_is_refused_without_showing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.ini"
    config.write_text(BASE + "password_file = pw.txt\n")
    config.chmod(0o644)  # holds no password itself: fine
    (tmp_path / "pw.txt").write_text(PW)
    (tmp_path / "pw.txt").chmod(0o644)
    assert main(["check", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {tmp_path}/pw.txt: {tmp_path}/pw.txt is a password file but is readable by "
        f"group or others (mode 0644); fix it with: chmod 600 {tmp_path}/pw.txt\n"
    )
