"""The report: terminal table cells, and the HTML page opened in Debian's headless chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from dashkanban.kanban.analytics import analyze
from dashkanban.kanban.report import render_html, row_of, terminal_table
from tests.kanban.test_analytics import END, INFOS, SAFETY, START, observations

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
GENERATED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def report():  # type: ignore[no-untyped-def]
    return analyze(observations(), INFOS, START, END, SAFETY)


def test_rows_and_terminal_table() -> None:
    rows = [row_of(s) for s in report().bins]
    assert rows == [
        ["A3", "M6 screws", "Aisle 2", "6", "2", "4.0", "3.0", "10", "5", "50", "2"],
        ["B1", "Cable ties", "Aisle 4", "2", "0", "7.5", "0.0", "6.67", "3", "100", "1"],
        ["C7", "Safety gloves L", "Gate 1", "0", "0", "—", "—", "0", "5", "12", "—"],
        ["D2", "Fuses 10A", "Aisle 1", "5", "0", "2.5", "3.0", "8.33", "10", "50", "2"],
    ]
    out = io.StringIO()
    Console(file=out, width=200).print(terminal_table(report()))
    text = out.getvalue()
    assert text.startswith(
        "Kanban report: 2026-11-01 00:00 to 2026-12-01 00:00 (30.0 days), safety 20%, from "
        "local history"
    )
    assert re.search(
        r"│ A3\s+│ M6 screws\s+│ Aisle 2\s+│\s+6 │\s+2 │\s+4\.0 │\s+3\.0 │\s+10 │", text
    )


def _pngs(dom: str) -> dict[str, Image.Image]:
    images = {}
    for ident, data in re.findall(
        r'<img id="(\w+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom
    ):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()  # decodes the whole PNG, so a truncated one fails here
        images[ident] = image
    return images


def test_html_is_self_contained_with_two_plots(tmp_path: Path) -> None:
    page = render_html(report(), GENERATED)
    assert "<script" not in page
    assert "http" not in page  # nothing fetched: self-contained
    images = _pngs(page)
    assert sorted(images) == ["intervals", "timeline"]
    assert images["timeline"].size == (1000, 320)  # 10 in x (1.2 + 0.5 x 4 bins) in at 100 dpi
    assert images["intervals"].size == (1000, 270)  # three bins with intervals
    assert '<td class="cards n">2</td>' in page


def _chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={user_dir}", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )


@pytest.mark.browser
def test_report_opens_in_headless_chromium(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    page = tmp_path / "report.html"
    page.write_text(render_html(report(), GENERATED), encoding="utf-8")
    dom = _chromium("--dump-dom", page.as_uri(), user_dir=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = _pngs(dom.stdout)
    assert sorted(images) == ["intervals", "timeline"]
    assert "<td>A3</td>" in dom.stdout
    shot = tmp_path / "shot.png"
    result = _chromium(f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri(),
                       user_dir=tmp_path / "profile-shot")
    assert result.returncode == 0, result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    # The marks of both plots are drawn in #1f77b4 and nothing else on the page is: a blank page,
    # or one whose images did not decode, has none of it. Both plots: the blue spans the page.
    pixels = np.asarray(image).astype(int)
    blue = (
        (abs(pixels[..., 0] - 0x1F) < 30)
        & (abs(pixels[..., 1] - 0x77) < 30)
        & (abs(pixels[..., 2] - 0xB4) < 30)
    )
    rows = np.flatnonzero(blue.any(axis=1))
    assert blue.sum() > 800
    assert rows.max() - rows.min() > 400  # from the timeline down into the intervals plot
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 100
