"""The project builds a wheel with the setuptools of the test's own environment, without build
isolation (nothing fetched): what `pip wheel --no-build-isolation .` and Debian's packaging do.
pyproject.toml's licence is the SPDX string form, which setuptools before 77 refuses (a Python
3.11 venv comes with 65.5, Debian 12 has 66.1): the dev extra brings a setuptools that reads it,
without which this build failed on `project.license`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The names of the test tooling modules in tests/ (not test_*.py): frame forging, brokers, the
# fault kit, the sandbox fixture, helpers. No module of the package may be named like one.
TOOLING = frozenset(
    p.stem for p in (ROOT / "tests").rglob("*.py")
    if not p.stem.startswith("test_") and p.stem not in ("__init__", "conftest"))


def test_the_tooling_list_is_not_empty() -> None:
    """The wheel check below is only as good as this set."""
    assert {"forge", "brokers", "faults", "faultkit", "sandbox_fixture", "netns"} <= TOOLING


def test_a_wheel_builds_without_build_isolation(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="no setuptools to build with (build isolation only)")
    # A copy: an in-tree build writes build/ and *.egg-info next to the sources.
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "wheels"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
         "-w", str(out), str(project)],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [wheel] = out.iterdir()
    assert wheel.name == "dashkanban-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read("dashkanban-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    # The package and its data only: no tests, benchmarks or scripts of the repository.
    assert {n.split("/")[0] for n in names} == {"dashkanban", "dashkanban-0.1.0.dist-info"}
    assert not [n for n in names if "test" in n.lower() or "conftest" in n]
    # Nor the test tooling, whose names say nothing of tests (capture/forge.py shipped once).
    assert not [n for n in names if Path(n).stem in TOOLING], sorted(TOOLING)
    for data in ("dashkanban/py.typed", "dashkanban/data/MACID.csv",
                 "dashkanban/data/sample-store.pcapng", "dashkanban/sandbox/static/openapi.json"):
        assert data in names
