"""Kanban analytics (pure): per bin, reorders, time between them, demand and the card count.

Each reorder press means one container of `quantity` (C) pieces was emptied. Over an observation
window of T days with n reorders:

    demand per day      D = n x C / T
    recommended cards   K = ceil(D x L x (1 + safety) / C)      (L: lead time in days)

the classic Kanban sizing: enough containers to cover the demand during the lead time, plus a
safety margin. The time between consecutive reorders is summarised by its median and its spread,
the interquartile range (IQR = Q3 - Q1, quartiles by linear interpolation between order
statistics, numpy's default and `statistics.quantiles(method="inclusive")`).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from dashkanban.kanban.bins import Bin

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class BinInfo:
    """What the analytics need to know about a bin (from MACID.csv or a c8y_Kanban fragment)."""

    name: str
    part: str | None = None
    quantity: int | None = None
    location: str | None = None
    lead_time_days: float | None = None

    @classmethod
    def of(cls, bin_: Bin) -> BinInfo:
        return cls(bin_.name, bin_.part, bin_.quantity, bin_.location, bin_.lead_time_days)


@dataclass(frozen=True, slots=True)
class BinStats:
    info: BinInfo
    reorders: int
    repeats: int
    times: tuple[datetime, ...]  # the reorder times, oldest first
    intervals_days: tuple[float, ...]  # between consecutive reorders
    median_days: float | None
    q1_days: float | None
    q3_days: float | None
    demand_per_day: float | None  # pieces a day; None without a quantity
    recommended_cards: int | None  # None without quantity, lead time or any reorder

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def iqr_days(self) -> float | None:
        if self.q1_days is None or self.q3_days is None:
            return None
        return self.q3_days - self.q1_days


@dataclass(frozen=True, slots=True)
class Report:
    start: datetime
    end: datetime
    safety: float
    bins: tuple[BinStats, ...]
    source: str  # where the presses came from, for the page's header

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / SECONDS_PER_DAY


@dataclass(frozen=True, slots=True)
class Observation:
    """One press of a reorder button: a new reorder, or a repeat while the bin was still open."""

    bin: str
    time: datetime
    kind: str  # reorder or repeat


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3), linear interpolation; a single value is its own quartiles."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def recommended_cards(
    demand_per_day: float, lead_time_days: float, safety: float, quantity: int
) -> int:
    """ceil(D x L x (1 + safety) / C). Rounded to 9 places first, so 2.0000000000004 is 2."""
    raw = demand_per_day * lead_time_days * (1.0 + safety) / quantity
    return math.ceil(round(raw, 9))


def analyze(
    observations: Iterable[Observation],
    bins: Mapping[str, BinInfo],
    start: datetime,
    end: datetime,
    safety: float,
    source: str = "local history",
) -> Report:
    """Per-bin statistics over [start, end]. Bins without presses are listed with zero reorders;
    presses for bins not in `bins` (a bin since removed from MACID.csv) are kept, unsized."""
    days = (end - start).total_seconds() / SECONDS_PER_DAY
    times: dict[str, list[datetime]] = {name: [] for name in bins}
    repeats: dict[str, int] = dict.fromkeys(bins, 0)
    for obs in observations:
        if not start <= obs.time <= end:
            continue
        times.setdefault(obs.bin, [])
        repeats.setdefault(obs.bin, 0)
        if obs.kind == "reorder":
            times[obs.bin].append(obs.time)
        else:
            repeats[obs.bin] += 1
    stats = []
    for name in sorted(times):
        info = bins.get(name) or BinInfo(name)
        stamps = sorted(times[name])
        intervals = tuple(
            (b - a).total_seconds() / SECONDS_PER_DAY for a, b in itertools.pairwise(stamps)
        )
        q1 = median = q3 = None
        if intervals:
            q1, median, q3 = quartiles(intervals)
        demand = None
        cards = None
        if info.quantity is not None and days > 0:
            demand = len(stamps) * info.quantity / days
            if info.lead_time_days is not None and stamps:
                cards = recommended_cards(demand, info.lead_time_days, safety, info.quantity)
        stats.append(
            BinStats(
                info=info,
                reorders=len(stamps),
                repeats=repeats[name],
                times=tuple(stamps),
                intervals_days=intervals,
                median_days=median,
                q1_days=q1,
                q3_days=q3,
                demand_per_day=demand,
                recommended_cards=cards,
            )
        )
    return Report(start=start, end=end, safety=safety, bins=tuple(stats), source=source)


def classify(
    presses: Iterable[tuple[str, datetime, str]],
) -> list[Observation]:
    """Replay (bin, time, role) presses in time order into reorders and repeats.

    Used for presses read back from Cumulocity, where only the events are known: in a bin whose
    refill button was pressed in the window, a reorder press while the bin is open (no refill
    press since its last reorder) is a repeat, the rule the daemon applies live
    (`alarms.signal_for`). A bin refilled only by command or operation leaves no event, so there
    every press counts as a reorder.
    """
    ordered = sorted(presses, key=lambda p: p[1])
    with_refills = {bin_ for bin_, _, role in ordered if role == "refill"}
    open_bins: set[str] = set()
    result = []
    for bin_, time, role in ordered:
        if role == "refill":
            open_bins.discard(bin_)
            continue
        repeat = bin_ in open_bins and bin_ in with_refills
        result.append(Observation(bin_, time, "repeat" if repeat else "reorder"))
        open_bins.add(bin_)
    return result
