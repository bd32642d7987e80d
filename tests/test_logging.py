"""Logging: `--log-format json` gives exactly {time, level, logger, message} a line; text format has
no colour codes when stderr is not a terminal (journald stores what it gets)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dashkanban.cli import JsonFormatter, setup_logging


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("broken frame")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("dashkanban.commands.run", logging.INFO, __file__, 1, message, args,
                            exc_info)
    rec.created = 1795680001.234567  # 2026-11-26T08:00:01.234567Z
    return rec


def test_json_shape_is_exact() -> None:
    line = JsonFormatter().format(record("press %s: %s", "dashButton_1", "delivered"))
    assert line == (
        '{"time": "2026-11-26T08:00:01.234+00:00", "level": "info", '
        '"logger": "dashkanban.commands.run", "message": "press dashButton_1: delivered"}'
    )
    assert list(json.loads(line)) == ["time", "level", "logger", "message"]


def test_json_stays_one_line_and_keeps_non_ascii() -> None:
    line = JsonFormatter().format(record("Lager Süd\nsecond line"))
    assert "\n" not in line
    assert json.loads(line)["message"] == "Lager Süd\nsecond line"
    assert "Süd" in line  # not \\u00fc: readable in journalctl


def test_json_exception_is_a_fifth_key() -> None:
    data = json.loads(JsonFormatter().format(record("decode failed", exc=True)))
    assert list(data) == ["time", "level", "logger", "message", "exception"]
    assert data["exception"].startswith("Traceback (most recent call last):\n")
    assert data["exception"].endswith("ValueError: broken frame")


def test_setup_logging_replaces_handlers_and_sets_level(
    capfd: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("warning", "json")
        setup_logging("warning", "json")  # twice: still one handler, no doubled lines
        logging.getLogger("dashkanban.x").info("hidden")
        logging.getLogger("dashkanban.x").warning("shown")
        err = capfd.readouterr().err.splitlines()
        assert len(err) == 1
        assert {k: v for k, v in json.loads(err[0]).items() if k != "time"} == {
            "level": "warning", "logger": "dashkanban.x", "message": "shown"}
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # stderr is a pipe, as under systemd (journald's stream) or a log shipper.
    return subprocess.run(
        [sys.executable, "-m", "dashkanban", "--log-level", "debug", *args],
        capture_output=True, text=True, check=False, timeout=60,
    )


def test_cli_json_lines_on_stderr(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    result = run("--log-format", "json", "service", "uninstall", "--dry-run", "--root", str(root))
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert list(data) == ["time", "level", "logger", "message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", data["time"])
    assert (data["level"], data["logger"], data["message"]) == (
        "debug", "dashkanban.commands.service",
        f"service uninstall: 3 steps under {root} (dry run)")


def test_cli_text_lines_have_no_colour_when_not_a_tty(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    result = run("service", "uninstall", "--dry-run", "--root", str(root))
    assert result.returncode == 0
    assert "\x1b" not in result.stderr + result.stdout
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG   dashkanban\.commands\.service: "
        r"service uninstall: "
        + re.escape(f"3 steps under {root} (dry run)") + "\n",
        result.stderr,
    )


def test_final_error_line_is_json_in_json_mode(tmp_path: Path) -> None:
    missing = tmp_path / "absent.ini"
    result = run("--log-format", "json", "outbox", "status", "-c", str(missing))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert list(data) == ["time", "level", "logger", "message"]
    assert (data["level"], data["logger"], data["message"]) == (
        "error", "dashkanban.cli", f"{missing}: config file not found")


def test_final_error_line_stays_plain_text_in_text_mode(tmp_path: Path) -> None:
    missing = tmp_path / "absent.ini"
    result = run("outbox", "status", "-c", str(missing))
    assert (result.returncode, result.stderr) == (2, f"error: {missing}: config file not found\n")


def test_final_line_shapes() -> None:
    from dashkanban.cli import final_line

    assert final_line("broken", "text") == "error: broken"
    assert final_line("interrupted", "text", logging.WARNING) == "interrupted"
    data = json.loads(final_line("interrupted", "json", logging.WARNING))
    assert (data["level"], data["message"]) == ("warning", "interrupted")


def run_to_file(tmp_path: Path, journal_stream: str | None, *args: str) -> str:
    """Run with stderr on a file, as systemd hands the journal's stream to a service."""
    import os

    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err:
        info = os.fstat(err.fileno())
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream.format(dev=info.st_dev, ino=info.st_ino)
        result = subprocess.run(
            [sys.executable, "-m", "dashkanban", "--log-level", "debug", *args],
            stdout=subprocess.PIPE, stderr=err, text=True, check=False, timeout=60, env=env,
        )
    assert result.returncode == 0
    return err_path.read_text()


@pytest.mark.parametrize(
    ("journal_stream", "stamped"),
    [
        ("{dev}:{ino}", False),  # stderr is the journal's stream: journald adds the time
        (None, True),
        ("{dev}:1", True),  # inherited by a process whose stderr goes elsewhere
        ("garbage", True),
    ],
    ids=["journal", "unset", "other-stream", "malformed"],
)
def test_text_format_drops_the_time_only_on_the_journal_stream(
    tmp_path: Path, journal_stream: str | None, stamped: bool
) -> None:
    root = scratch_root(tmp_path)
    err = run_to_file(tmp_path, journal_stream, "service", "uninstall", "--dry-run",
                      "--root", str(root))
    line = "DEBUG   dashkanban.commands.service: " + re.escape(
        f"service uninstall: 3 steps under {root} (dry run)") + "\n"
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} " if stamped else ""
    assert re.fullmatch(stamp + line, err), err


def test_json_format_keeps_its_time_on_the_journal_stream(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    err = run_to_file(tmp_path, "{dev}:{ino}", "--log-format", "json", "service", "uninstall",
                      "--dry-run", "--root", str(root))
    assert list(json.loads(err)) == ["time", "level", "logger", "message"]
