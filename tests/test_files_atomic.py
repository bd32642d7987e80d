"""files.write_atomic: the one atomic file write (health.py's uplink state, batteries.json)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dashkanban.files import write_atomic


def test_the_file_is_replaced_whole_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    path.chmod(0o644)
    write_atomic(path, b'{"format":1}', 0o600)
    assert path.read_bytes() == b'{"format":1}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the old file's looser mode is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_leftover_temporary_file_is_overwritten_with_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "batteries.json"
    leftover = tmp_path / f".batteries.json.{os.getpid()}.tmp"
    leftover.write_text("a crash left this " * 100)
    leftover.chmod(0o666)
    write_atomic(path, b"{}", 0o644)
    assert (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) == (b"{}", 0o644)
    assert not leftover.exists()


def test_a_failed_write_leaves_the_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()  # os.replace of a file over a folder fails
    with pytest.raises(IsADirectoryError):
        write_atomic(path, b"new", 0o600)
    assert path.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "state.json", b"new", 0o600)


def test_the_file_and_its_folder_are_fsynced(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A power loss cannot be made here: the calls that make the write survive one are recorded
    # (the real fsync still runs).
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomic(tmp_path / "batteries.json", b"{}", 0o644)
    assert synced == ["file", "folder"]
