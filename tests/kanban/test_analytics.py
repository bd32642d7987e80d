"""A deterministic history and its recommendations, checked against a hand calculation."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dashkanban.config import KanbanSettings
from dashkanban.detect.buttons import Button
from dashkanban.detect.presses import Press
from dashkanban.kanban.analytics import (
    BinInfo,
    Observation,
    analyze,
    classify,
    quartiles,
    recommended_cards,
)
from dashkanban.kanban.bins import parse_bins
from dashkanban.kanban.history import History
from dashkanban.kanban.loop import KanbanLoop

START = datetime(2026, 11, 1, tzinfo=UTC)
END = START + timedelta(days=30)
SAFETY = 0.2

INFOS = {
    "A3": BinInfo("A3", "M6 screws", 50, "Aisle 2", 5.0),
    "B1": BinInfo("B1", "Cable ties", 100, "Aisle 4", 3.0),
    "C7": BinInfo("C7", "Safety gloves L", 12, "Gate 1", 5.0),
    "D2": BinInfo("D2", "Fuses 10A", 50, "Aisle 1", 10.0),
}
# Reorder times in days after START.
REORDERS = {
    "A3": [0.5, 1.5, 3.5, 7.5, 12.5, 19.5],
    "B1": [2.0, 9.5],
    "C7": [],
    "D2": [1.0, 2.0, 4.0, 7.0, 17.0],
}
REPEATS = {"A3": [0.6, 12.9]}


def at(days: float) -> datetime:
    return START + timedelta(days=days)


def observations() -> list[Observation]:
    result = [Observation(b, at(d), "reorder") for b, ds in REORDERS.items() for d in ds]
    result += [Observation(b, at(d), "repeat") for b, ds in REPEATS.items() for d in ds]
    result.append(Observation("A3", at(35), "reorder"))  # after END: outside the window
    return result


def test_hand_calculation() -> None:
    """The window is 30 days; safety 0.2.

    A3: 6 reorders, intervals 1, 2, 4, 5, 7 days. Sorted: 1 2 4 5 7; median 4.
        Quartiles by linear interpolation: Q1 at position 0.25 x 4 = 1 -> 2; Q3 at 3 -> 5; IQR 3.
        D = 6 x 50 / 30 = 10 pieces/day; cards = ceil(10 x 5 x 1.2 / 50) = ceil(1.2) = 2.
        The two repeats are counted apart and are not demand.
    B1: 2 reorders, one interval of 7.5 days: median 7.5, IQR 0.
        D = 2 x 100 / 30 = 6.67; cards = ceil(6.67 x 3 x 1.2 / 100) = ceil(0.24) = 1.
    C7: no reorder: demand 0, no recommendation, no intervals.
    D2: 5 reorders, intervals 1, 2, 3, 10. Q1 at 0.75: 1 + 0.75 x (2 - 1) = 1.75; median 2.5;
        Q3 at 2.25: 3 + 0.25 x (10 - 3) = 4.75; IQR 3.
        D = 5 x 50 / 30 = 8.33; cards = ceil(8.33 x 10 x 1.2 / 50) = ceil(2) = 2, exactly 2 (in
        floating point it comes out as 2.0000000000000004: the rounding must not make it 3).
    """
    report = analyze(observations(), INFOS, START, END, SAFETY)
    got = {
        s.name: (s.reorders, s.repeats, s.intervals_days, s.median_days, s.q1_days, s.q3_days,
                 s.iqr_days, s.demand_per_day, s.recommended_cards)
        for s in report.bins
    }
    assert got == {
        "A3": (6, 2, (1.0, 2.0, 4.0, 5.0, 7.0), 4.0, 2.0, 5.0, 3.0, 10.0, 2),
        "B1": (2, 0, (7.5,), 7.5, 7.5, 7.5, 0.0, 2 * 100 / 30, 1),
        "C7": (0, 0, (), None, None, None, None, 0.0, None),
        "D2": (5, 0, (1.0, 2.0, 3.0, 10.0), 2.5, 1.75, 4.75, 3.0, 5 * 50 / 30, 2),
    }
    assert report.days == 30.0
    raw = (5 * 50 / 30) * 10 * 1.2 / 50
    assert raw > 2  # the float trap the rounding guards against
    assert math.ceil(raw) == 3


def test_missing_quantity_or_lead_time_gives_no_recommendation() -> None:
    infos = {"X": BinInfo("X", quantity=None, lead_time_days=2.0),
             "Y": BinInfo("Y", quantity=10, lead_time_days=None)}
    obs = [Observation("X", at(1), "reorder"), Observation("Y", at(1), "reorder"),
           Observation("gone", at(2), "reorder")]
    report = analyze(obs, infos, START, END, SAFETY)
    assert [(s.name, s.demand_per_day, s.recommended_cards) for s in report.bins] == [
        ("X", None, None), ("Y", 10 / 30, None), ("gone", None, None),
    ]


def test_helpers() -> None:
    assert quartiles([4.0]) == (4.0, 4.0, 4.0)
    assert recommended_cards(10, 5, 0.2, 50) == 2
    assert recommended_cards(5 * 50 / 30, 10, 0.2, 50) == 2
    assert recommended_cards(0.01, 1, 0, 50) == 1
    # Cumulocity's view: presses replayed into reorders and repeats, refills close the bin.
    assert classify(
        [("A3", at(3), "reorder"), ("A3", at(1), "reorder"), ("A3", at(2), "refill"),
         ("A3", at(1.5), "reorder"), ("B1", at(1), "reorder"), ("B1", at(2), "reorder")]
    ) == [
        Observation("A3", at(1), "reorder"),
        Observation("B1", at(1), "reorder"),
        Observation("A3", at(1.5), "repeat"),
        Observation("B1", at(2), "reorder"),  # no refill press for B1: every press counts
        Observation("A3", at(3), "reorder"),
    ]


def test_recommendations_from_a_real_history(tmp_path: Path) -> None:
    """The same A3 and B1 presses, pressed through the loop into SQLite and read back."""
    registry, bins = parse_bins(
        "Name, MAC-Address, bin, part, quantity, location, lead_time_days, role\n"
        "a3, ac:63:be:00:00:01, A3, M6 screws, 50, Aisle 2, 5,\n"
        "a3-full, ac:63:be:00:00:02, A3, , , , , refill\n"
        "b1, ac:63:be:00:00:03, B1, Cable ties, 100, Aisle 4, 3,\n",
        Path("MACID.csv"),
    )
    button = {b.name: b for b in registry}
    settings = KanbanSettings(alarms=True, severity="MAJOR", safety=SAFETY, history_days=730)
    presses: list[tuple[Button, float]] = []
    for d in REORDERS["A3"]:
        presses += [(button["a3"], d), (button["a3-full"], d + 0.05)]
    presses += [(button["a3"], 0.52), (button["a3"], 12.51)]  # repeats: A3 was still open
    presses += [(button["b1"], 2.0), (button["b1"], 9.5)]
    with History.open(tmp_path / "history.sqlite3", 730, END) as history:
        loop = KanbanLoop(bins, settings, history)
        for b, d in sorted(presses, key=lambda p: p[1]):
            loop.on_press(Press(b, at(d), "arp"))
        obs = history.observations()
        assert history.first_press() == at(0.5)
    # B1 was never refilled, so its second press is a repeat; everything else matches.
    report = analyze(obs, {b.name: BinInfo.of(b) for b in bins}, START, END, SAFETY)
    got = {s.name: (s.reorders, s.repeats, s.median_days, s.iqr_days, s.recommended_cards)
           for s in report.bins}
    assert got == {"A3": (6, 2, 4.0, 3.0, 2), "B1": (1, 1, None, None, 1)}
    assert report.bins[0].demand_per_day == pytest.approx(10.0)
