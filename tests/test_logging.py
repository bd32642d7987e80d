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
    rec = logging.LogRecord("dashkanban.daemon", logging.INFO, __file__, 1, message, args, exc_info)
    rec.created = 1795680001.234567  # 2026-11-26T08:00:01.234567Z
    return rec


def test_json_shape_is_exact() -> None:
    line = JsonFormatter().format(record("press %s: %s", "dashButton_1", "delivered"))
    assert line == (
        '{"time": "2026-11-26T08:00:01.234+00:00", "level": "info", '
        '"logger": "dashkanban.daemon", "message": "press dashButton_1: delivered"}'
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
        "debug", "dashkanban.service", f"service uninstall: 3 steps under {root} (dry run)")


def test_cli_text_lines_have_no_colour_when_not_a_tty(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    result = run("service", "uninstall", "--dry-run", "--root", str(root))
    assert result.returncode == 0
    assert "\x1b" not in result.stderr + result.stdout
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG   dashkanban\.service: service uninstall: "
        + re.escape(f"3 steps under {root} (dry run)") + "\n",
        result.stderr,
    )
