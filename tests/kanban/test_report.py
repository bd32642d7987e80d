"""The report: terminal table cells, and the HTML page opened in Debian's headless chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from dashkanban.kanban.analytics import Replenishment, analyze
from dashkanban.kanban.report import HEADERS, render_html, report_json, row_of, terminal_table
from tests.kanban.test_analytics import END, INFOS, SAFETY, START, at, observations

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
GENERATED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


# The worked example of docs/kanban.md (and the README's screenshot): the analytics test's bins
# with suppliers and the cards in each loop today, and the refills on record.
SUPPLIERS = {"A3": ("Würth", 3), "B1": ("Hellermann", 1), "C7": (None, 2), "D2": ("Würth", 1)}
BINS = {
    name: replace(info, supplier=SUPPLIERS[name][0], cards=SUPPLIERS[name][1])
    for name, info in INFOS.items()
}
# (bin, reorder day, refill day): A3 four times (2.5, 3, 4, 4 days: median 3.5, measured);
# B1 twice (2.5 days each: fewer than min_samples 3, so its configured 3 days is used).
REFILLS = [("A3", 0.5, 3.0), ("A3", 3.5, 6.5), ("A3", 7.5, 11.5), ("A3", 12.5, 16.5),
           ("B1", 2.0, 4.5), ("B1", 9.5, 12.0)]


def report():  # type: ignore[no-untyped-def]
    cleared = [Replenishment(b, at(r), at(f)) for b, r, f in REFILLS]
    # A3's reorder of day 19.5 is still open at the end (day 30): 10.5 days > 3.5, overdue.
    return analyze(observations(), BINS, START, END, SAFETY, cleared=cleared,
                   open_reorders={"A3": at(19.5)}, min_samples=3)


def test_rows_and_terminal_table() -> None:
    """A3: D = 10 a day, L = 3.5 measured: ceil(10 x 3.5 x 1.2 / 50) = ceil(0.84) = 1 card
    needed, 3 in the loop: remove 2. B1: ceil(6.67 x 3 x 1.2 / 100) = ceil(0.24) = 1: ok.
    D2: ceil(8.33 x 10 x 1.2 / 50) = ceil(2.0) = 2 (the rounding case), 1 in the loop: add 1."""
    rows = [row_of(s) for s in report().bins]
    assert rows == [
        ["A3", "M6 screws", "Aisle 2", "Würth", "6", "2", "4.0", "3.0", "10",
         "3.5 measured (4)", "yes", "50", "3", "1", "remove 2 cards"],
        ["B1", "Cable ties", "Aisle 4", "Hellermann", "2", "0", "7.5", "0.0", "6.67",
         "3 configured (2 measured)", "no", "100", "1", "1", "ok"],
        ["C7", "Safety gloves L", "Gate 1", "—", "0", "0", "—", "—", "0",
         "5 configured", "no", "12", "2", "—", "—"],
        ["D2", "Fuses 10A", "Aisle 1", "Würth", "5", "0", "2.5", "3.0", "8.33",
         "10 configured", "no", "50", "1", "2", "add 1 card"],
    ]
    out = io.StringIO()
    Console(file=out, width=200).print(terminal_table(report()))
    text = out.getvalue()
    assert text.startswith(
        "Kanban report: 2026-11-01 00:00 to 2026-12-01 00:00 (30.0 days), safety 20%, from "
        "local history"
    )
    assert re.search(
        r"│ A3\s+│ M6 screws\s+│ Aisle 2\s+│ Würth\s+│\s+6 │\s+2 │\s+4\.0 │\s+3\.0 │\s+10 │",
        text,
    )
    assert "IQR" not in text
    assert "Typical spread (days)" in HEADERS


def test_json_has_the_documented_keys_in_order() -> None:
    data = report_json(report())
    assert list(data) == ["from", "to", "source", "bins"]
    assert (data["from"], data["to"], data["source"]) == (
        "2026-11-01T00:00:00+00:00", "2026-12-01T00:00:00+00:00", "local history")
    a3 = data["bins"][0]
    assert a3 == {
        "bin": "A3", "part": "M6 screws", "location": "Aisle 2", "supplier": "Würth",
        "reorders": 6, "repeats": 2, "demand_per_day": 10.0,
        "lead_time_days": {"configured": 5.0, "measured": 3.5, "samples": 4, "used": "measured"},
        "overdue": True,
        "cards": {"current": 3, "recommended": 1, "action": "remove 2 cards"},
    }
    assert list(a3) == ["bin", "part", "location", "supplier", "reorders", "repeats",
                        "demand_per_day", "lead_time_days", "overdue", "cards"]
    assert [b["lead_time_days"]["used"] for b in data["bins"]] == [
        "measured", "configured", "configured", "configured"]
    assert [b["cards"]["action"] for b in data["bins"]] == [
        "remove 2 cards", "ok", None, "add 1 card"]


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
    assert sorted(images) == ["intervals", "replenishment", "timeline"]
    assert images["timeline"].size == (1000, 320)  # 10 in x (1.2 + 0.5 x 4 bins) in at 100 dpi
    assert images["intervals"].size == (1000, 270)  # three bins with intervals
    assert images["replenishment"].size == (1000, 320)  # four bins with a lead time
    assert '<td class="cards n">2</td>' in page
    assert "IQR" not in page


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
    assert sorted(images) == ["intervals", "replenishment", "timeline"]
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
