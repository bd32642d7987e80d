"""Issue 13, hole 8: config, password_file and MACID.csv are read as ssh reads its files: regular
files only, with a size bound, and a file that holds or directs a password must belong to the
person running dashkanban or to root."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from dashkanban.errors import ConfigError
from dashkanban.files import MAX_CONFIG_BYTES, check_owner

GOOD = """\
[C8YMQTT]
tenant = example.cumulocity.com
tenantID = t12345
user = dash-gateway
{secret}

[buttons]
file = {buttons}

[outbox]
path = {outbox}
"""
IS_ROOT = os.geteuid() == 0


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in a child, with a timeout: a FIFO that blocked would hang it."""
    return subprocess.run([sys.executable, "-m", "dashkanban", *args], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "DASHKANBAN_PASSWORD": "", "SUDO_UID": "",
                               **(env or {})})


def _config(tmp_path: Path, secret: str = "password = s", buttons: str = "MACID.csv") -> Path:  # noqa: S107
    (tmp_path / "MACID.csv").write_text("Name, MAC-Address\ndashButton_1, ac:63:be:12:34:56\n")
    config = tmp_path / "config.ini"
    config.unlink(missing_ok=True)  # a new file, ours
    config.write_text(GOOD.format(secret=secret, buttons=tmp_path / buttons,
                                  outbox=tmp_path / "outbox.sqlite3"))
    config.chmod(0o600)
    return config


def _replay(config: Path) -> subprocess.CompletedProcess[str]:
    return _run("replay", str(config.parent / "none.pcap"), "--dry-run", "-c", str(config))


def test_a_config_on_a_fifo_or_a_device_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "config.ini"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device")):
        result = _run("outbox", "status", "-c", str(path))
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr == (
            f"error: {path}: config file must be a regular file, but this is {kind}\n"
        )


def test_a_password_file_on_a_fifo_or_a_device_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pw.fifo")
    for target, kind in ((tmp_path / "pw.fifo", "a FIFO"), (Path("/dev/zero"),
                                                            "a character device")):
        config = _config(tmp_path, f"password_file = {target}")
        result = _replay(config)
        assert result.returncode == 2
        assert result.stderr == (
            f"error: {config}:5: password_file {target} must be a regular file, but this is "
            f"{kind}\n"
        )


def test_macid_csv_on_a_fifo_or_a_device_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "buttons.fifo")
    for target, kind in ((tmp_path / "buttons.fifo", "a FIFO"), (Path("/dev/zero"),
                                                                 "a character device")):
        config = _config(tmp_path, buttons=str(target))
        result = _replay(config)
        assert result.returncode == 2
        assert result.stderr == (
            f"error: {target}: buttons file must be a regular file, but this is {kind}\n"
        )


def test_files_are_read_with_a_size_bound(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with config.open("a") as f:
        f.write("#" * MAX_CONFIG_BYTES + "\n")
    result = _run("outbox", "status", "-c", str(config))
    assert (result.returncode, result.stderr) == (
        2, f"error: {config}: config file is larger than 1048576 bytes; is this the right file?\n"
    )
    password = tmp_path / "pw.txt"
    password.write_bytes(b"x" * (64 * 1024 + 1))
    password.chmod(0o600)
    result = _replay(config := _config(tmp_path, f"password_file = {password}"))
    assert (result.returncode, result.stderr) == (
        2, f"error: {config}:5: password_file {password} is larger than 65536 bytes; is this the "
        "right file?\n"
    )


def test_an_over_long_csv_field_is_file_and_line(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with (tmp_path / "MACID.csv").open("a") as f:
        f.write("ok, fc:a6:67:0a:0b:0c\n" + "x" * 131_073 + ", fc:a6:67:0a:0b:0d\n")
    result = _replay(config)
    assert (result.returncode, result.stderr) == (
        2, f"error: {tmp_path / 'MACID.csv'}:4: unreadable CSV: field larger than field limit "
        "(131072)\n"
    )


def test_check_owner_accepts_us_and_root_only(tmp_path: Path) -> None:
    me = os.geteuid()
    check_owner(tmp_path, me, "config file")
    check_owner(tmp_path, 0, "config file")
    other = 65534 if me != 65534 else 65533
    with pytest.raises(ConfigError) as info:
        check_owner(tmp_path / "config.ini", other, "config file", {})
    try:
        other_name = pwd.getpwuid(other).pw_name
    except KeyError:
        other_name = f"uid {other}"
    me_name = pwd.getpwuid(me).pw_name
    whom = "root" if me == 0 else f"you ({me_name}) or root"
    assert str(info.value) == (
        f"{tmp_path / 'config.ini'}: config file holds or directs a password but belongs to "
        f"{other_name}, not to {whom}; if you trust its content, fix it with: sudo chown "
        f"{me_name} {tmp_path / 'config.ini'}"
    )


def test_under_sudo_the_invoking_users_file_is_theirs(tmp_path: Path) -> None:
    """`sudo dashkanban ...` on your own config: root accepts the file of $SUDO_UID."""
    me = os.geteuid()
    if me != 0:
        check_owner(tmp_path, me, "config file", {"SUDO_UID": "12345"})
        return
    check_owner(tmp_path, 12345, "config file", {"SUDO_UID": "12345"})
    with pytest.raises(ConfigError, match=r"belongs to uid 12346, not to you \(uid 12345, "
                                          r"through sudo\) or root"):
        check_owner(tmp_path, 12346, "config file", {"SUDO_UID": "12345"})


@pytest.mark.skipif(not IS_ROOT, reason="only root can hand a file to another user")
def test_root_refuses_another_users_config_that_directs_a_password(tmp_path: Path) -> None:
    """The attack: another user's config points password_file at a root-only file."""
    nobody = pwd.getpwnam("nobody")
    root_only = tmp_path / "root-only"
    root_only.write_text("root's secret\n")
    root_only.chmod(0o600)
    for secret, env in ((f"password_file = {root_only}", {}), ("password = theirs", {}),
                        ("", {"DASHKANBAN_PASSWORD": "root's env secret"})):
        config = _config(tmp_path, secret)
        os.chown(config, nobody.pw_uid, nobody.pw_gid)
        result = _run("replay", str(tmp_path / "none.pcap"), "--dry-run", "-c", str(config),
                      env=env)
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr == (
            f"error: {config}: config file holds or directs a password but belongs to nobody, "
            f"not to root; if you trust its content, fix it with: sudo chown root {config}\n"
        )
    # The password file itself must be ours or root's too.
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("secret\n")
    theirs.chmod(0o600)
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    result = _replay(config := _config(tmp_path, f"password_file = {theirs}"))
    assert (result.returncode, result.stderr) == (
        2, f"error: {config}:5: password_file {theirs} holds or directs a password but belongs to "
        f"nobody, not to root; if you trust its content, fix it with: sudo chown root {theirs}\n"
    )
