"""config.ini: every error names file, line and key; exact messages and exit code 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dashkanban.cli import main
from dashkanban.config import default_outbox_path, load_settings
from dashkanban.errors import ConfigError

GOOD = """\
[C8YMQTT]
tenant = example.cumulocity.com
tenantID = t12345
user = t12345/dash-gateway
password = secret
port = 8883
"""


def write(tmp_path: Path, text: str, mode: int = 0o600, name: str = "config.ini") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def error_of(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    return str(info.value)


def test_original_five_keys_load_with_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), {})
    c8y = settings.c8y
    assert (c8y.tenant, c8y.tenant_id, c8y.user, c8y.port) == (
        "example.cumulocity.com", "t12345", "dash-gateway", 8883)
    assert c8y.username == "t12345/dash-gateway"
    assert c8y.password is not None
    assert c8y.password.reveal() == "secret"
    assert repr(c8y.password) == "Secret('***')"
    assert c8y.tls is True
    assert c8y.rest_url == "https://example.cumulocity.com"
    assert c8y.keepalive == 60
    assert c8y.retry_max == 300
    assert settings.gateway.mode == "gateway"
    assert settings.gateway.serial.startswith("dashkanban-")
    assert settings.buttons.file == tmp_path / "MACID.csv"
    assert settings.buttons.source == "csv"
    assert settings.capture.detect == frozenset({"arp", "dhcp"})
    assert settings.capture.interface == "auto"
    assert settings.capture.promiscuous is False
    assert settings.debounce_seconds == 30.0
    assert settings.event.type == "c8y_MAC_Event"
    assert settings.event.text == "{name} pressed ({mac})"
    assert settings.outbox.path == default_outbox_path({})  # /var/lib/dashkanban for root


def test_default_outbox_path() -> None:
    def no(_path: Path) -> bool:
        return False

    assert default_outbox_path({"STATE_DIRECTORY": "/var/lib/dashkanban"}, euid=999) == Path(
        "/var/lib/dashkanban/outbox.sqlite3")
    assert default_outbox_path({}, euid=0, writable=no) == Path(
        "/var/lib/dashkanban/outbox.sqlite3")
    assert default_outbox_path({}, euid=1000, writable=lambda _p: True) == Path(
        "/var/lib/dashkanban/outbox.sqlite3")
    assert default_outbox_path({"HOME": "/home/pi"}, euid=1000, writable=no) == Path(
        "/home/pi/.local/state/dashkanban/outbox.sqlite3")
    assert default_outbox_path({"XDG_STATE_HOME": "/srv/st", "HOME": "/home/pi"}, euid=1000,
                               writable=no) == Path("/srv/st/dashkanban/outbox.sqlite3")


def test_password_is_verbatim(tmp_path: Path) -> None:
    """As configparser read it in the original: no inline comment, no quote stripping."""
    text = GOOD.replace("password = secret", 'password = "ab #cd ;ef"')
    settings = load_settings(write(tmp_path, text), {})
    assert settings.c8y.password is not None
    assert settings.c8y.password.reveal() == '"ab #cd ;ef"'


def test_bare_user_is_accepted(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD.replace("t12345/dash", "dash")), {})
    assert settings.c8y.username == "t12345/dash-gateway"


def test_design_example_with_inline_comments(tmp_path: Path) -> None:
    text = GOOD + """
[gateway]
serial = dashkanban-gw-01  ; external ID
name = Store 3 button gateway
mode = per-device

[buttons]
file = buttons/MACID.csv   ; relative to the config file
source = both

[capture]
interface = eth0
detect = arp, dhcp, ndp
promiscuous = yes

[debounce]
seconds = 12.5

[event]
type = c8y_MAC_Event
text = {name} pressed ({mac})

[outbox]
path = state/outbox.sqlite3
"""
    settings = load_settings(write(tmp_path, text), {})
    assert settings.gateway.serial == "dashkanban-gw-01"
    assert settings.gateway.name == "Store 3 button gateway"
    assert settings.gateway.mode == "per-device"
    assert settings.buttons.file == tmp_path / "buttons" / "MACID.csv"
    assert settings.buttons.source == "both"
    assert settings.capture.detect == frozenset({"arp", "dhcp", "ndp"})
    assert settings.capture.promiscuous is True
    assert settings.debounce_seconds == 12.5
    assert settings.outbox.path == tmp_path / "state" / "outbox.sqlite3"


def test_missing_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.ini") == f"{tmp_path / 'nope.ini'}: config file not found"


def test_no_config_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    if Path("/etc/dashkanban/config.ini").exists():
        pytest.skip("this machine has /etc/dashkanban/config.ini")
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: config.ini: no config file (also tried /etc/dashkanban/config.ini); "
        "give one with -c FILE"
    )


def test_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway]\nname = x\n")
    assert error_of(path) == (
        f"{path}:1: missing section [C8YMQTT] (tenant, tenantID, user, password, port)"
    )


def test_missing_password(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("password = secret\n", ""))
    assert error_of(path) == (
        f"{path}:1: [C8YMQTT] needs a password (or password_file, $DASHKANBAN_PASSWORD, or "
        "cert_file for certificate login)"
    )


def test_client_certificate_needs_no_password(tmp_path: Path) -> None:
    text = GOOD.replace("password = secret\n", "cert_file = gw.pem\nkey_file = gw.key\n")
    settings = load_settings(write(tmp_path, text), {})
    assert settings.c8y.password is None
    assert settings.c8y.cert_file == tmp_path / "gw.pem"
    assert settings.c8y.key_file == tmp_path / "gw.key"


def test_password_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("password = secret\n", ""), mode=0o644)
    settings = load_settings(path, {"DASHKANBAN_PASSWORD": "from-env"})
    assert settings.c8y.password is not None
    assert settings.c8y.password.reveal() == "from-env"


def test_password_file(tmp_path: Path) -> None:
    write(tmp_path, "pw-in-file\n", name="pw")
    path = write(tmp_path, GOOD.replace("password = secret", "password_file = pw"), mode=0o644)
    settings = load_settings(path, {})
    assert settings.c8y.password is not None
    assert settings.c8y.password.reveal() == "pw-in-file"


def test_loose_password_file_is_refused(tmp_path: Path) -> None:
    pw = write(tmp_path, "pw-in-file\n", name="pw", mode=0o604)
    path = write(tmp_path, GOOD.replace("password = secret", "password_file = pw"))
    assert error_of(path) == (
        f"{pw}: {pw} is a password file but is readable by group or others (mode 0604); "
        f"fix it with: chmod 600 {pw}"
    )


@pytest.mark.parametrize(("value", "message"), [
    ("abc", "port = abc: not a whole number"),
    ("0", "port = 0: out of range (1 to 65535)"),
    ("70000", "port = 70000: out of range (1 to 65535)"),
])
def test_bad_port(tmp_path: Path, value: str, message: str) -> None:
    path = write(tmp_path, GOOD.replace("port = 8883", f"port = {value}"))
    assert error_of(path) == f"{path}:6: {message}"


@pytest.mark.parametrize(("value", "message"), [
    ("abc", "retry_max = abc: not a whole number"),
    ("0", "retry_max = 0: out of range (1 to 86400)"),
    ("-5", "retry_max = -5: out of range (1 to 86400)"),
])
def test_bad_retry_max(tmp_path: Path, value: str, message: str) -> None:
    path = write(tmp_path, GOOD.replace("port = 8883", f"port = 8883\nretry_max = {value}"))
    assert error_of(path) == f"{path}:7: {message}"


def test_retry_max_of_one_second_is_the_minimum(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("port = 8883", "port = 8883\nretry_max = 1"))
    assert load_settings(path).c8y.retry_max == 1


def test_port_1883_with_tls(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("port = 8883", "port = 1883"))
    assert error_of(path) == (
        f"{path}:6: port 1883 is plain MQTT but tls = yes; use port 8883, or set tls = no and "
        "allow_insecure = yes"
    )


def test_plain_mqtt_needs_allow_insecure(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("port = 8883", "port = 1883\ntls = no"))
    assert error_of(path) == (
        f"{path}:7: tls = no sends the password in clear text; set allow_insecure = yes to "
        "accept that (only on a trusted network)"
    )
    ok = write(tmp_path, GOOD.replace("port = 8883", "port = 1883\ntls = no\nallow_insecure = yes"))
    settings = load_settings(ok, {})
    assert (settings.c8y.tls, settings.c8y.port) == (False, 1883)
    assert settings.c8y.rest_url == "http://example.cumulocity.com"


def test_unknown_key_with_hint(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "\n[debounce]\nsecond = 10\n")
    assert error_of(path) == (
        f"{path}:9: unknown key 'second' in [debounce] (did you mean 'seconds'?)"
    )


def test_unknown_key_in_c8ymqtt(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "pasword = x\n")
    assert error_of(path) == (
        f"{path}:7: unknown key 'pasword' in [C8YMQTT] (did you mean 'password'?)"
    )


def test_unknown_section_with_hint(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "\n[gatway]\nname = x\n")
    assert error_of(path) == f"{path}:8: unknown section [gatway] (did you mean 'gateway'?)"


def test_duplicate_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "port = 8884\n")
    assert error_of(path) == f"{path}:7: duplicate key 'port' in [C8YMQTT] (first on line 6)"


def test_duplicate_section(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "[C8YMQTT]\n")
    assert error_of(path) == f"{path}:7: duplicate section [C8YMQTT] (first on line 1)"


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604])
def test_password_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, GOOD, mode=mode)
    if mode & 0o070 and not mode & 0o007:
        # Group read is accepted for a private group; give the file a shared group to test it.
        os.chown(path, -1, _shared_gid())
    assert error_of(path) == (
        f"{path}:5: {path} holds a password but is readable by group or others "
        f"(mode {mode:04o}); fix it with: chmod 600 {path}"
    )


def _shared_gid() -> int:
    import grp

    for name in ("users", "staff", "daemon", "nogroup"):
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            continue
        if gid != os.getegid() and gid not in os.getgroups():
            return gid
    pytest.skip("no group on this machine that we are not a member of")


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    text = GOOD + "ca_file = ca.pem\n[buttons]\nfile = ../MACID.csv\n[outbox]\npath = out.db\n"
    settings = load_settings(write(sub, text), {})
    assert settings.c8y.ca_file == sub / "ca.pem"
    assert settings.buttons.file == sub / ".." / "MACID.csv"
    assert settings.outbox.path == sub / "out.db"


def test_tenant_prefix_must_match(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("t12345/dash", "t999/dash"))
    assert error_of(path) == (
        f"{path}:4: user's tenant prefix 't999' differs from tenantID 't12345'"
    )


def test_unknown_event_placeholder(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "[event]\ntext = {nme} pressed\n")
    assert error_of(path) == (
        f"{path}:8: text = {{nme}} pressed: unknown placeholder {{nme}}; known: {{name}}, {{mac}}, "
        "{serial}, {trigger}, {bin}, {part}, {quantity}, {location}, {kind} (did you mean 'name'?)"
    )


def test_bad_detect_method(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "[capture]\ndetect = arp, dchp\n")
    assert error_of(path) == (
        f"{path}:8: detect = arp, dchp: unknown method 'dchp'; expected some of: arp, dhcp, ndp "
        "(did you mean 'dhcp'?)"
    )


def test_line_without_equals(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "just words\n")
    assert error_of(path) == f"{path}:7: expected 'key = value'"


def test_cli_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD.replace("port = 8883", "port = eighty"))
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}:6: port = eighty: not a whole number"]


def test_password_never_in_error_or_repr(tmp_path: Path) -> None:
    text = GOOD.replace("password = secret", "password = Zq9-unique-pw")
    path = write(tmp_path, text.replace("port = 8883", "port = 1883"), mode=0o644)
    assert "Zq9-unique-pw" not in error_of(path)
    settings = load_settings(write(tmp_path, text, name="ok.ini"), {})
    assert "Zq9-unique-pw" not in repr(settings)
    assert "Zq9-unique-pw" not in str(settings.c8y.password)


def test_uplink_tuning_keys_are_read_with_a_login_and_with_stored_credentials(
    tmp_path: Path,
) -> None:
    """`max_inflight` and `retry_max` are read whichever way the login comes (a merge once
    dropped them from the password path, so both fell back to their defaults)."""
    config = tmp_path / "config.ini"
    config.write_text(
        "[C8YMQTT]\ntenant = example.cumulocity.com\ntenantID = t12345\nuser = t12345/gw\n"
        "password = pw\nmax_inflight = 7\nretry_max = 11\n"
        f"[buttons]\nfile = {tmp_path / 'MACID.csv'}\n[outbox]\npath = {tmp_path / 'o.db'}\n"
    )
    config.chmod(0o600)
    (tmp_path / "MACID.csv").write_text("Name, MAC-Address\n")
    c8y = load_settings(config, {}).c8y
    assert (c8y.max_inflight, c8y.retry_max) == (7, 11)
