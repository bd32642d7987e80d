"""Kanban analytics (pure): per bin, reorders, time between them, demand and the card count.

Each reorder press means one container of `quantity` (C) pieces was emptied. Over an observation
window of T days with n reorders:

    demand per day      D = n x C / T
    recommended cards   K = ceil(D x L x (1 + safety) / C)      (L: lead time in days)

the classic Kanban sizing: enough containers to cover the demand during the lead time, plus a
safety margin. The time between consecutive reorders is summarised by its median and its typical
spread, Q3 - Q1: the range of the middle half (quartiles by linear interpolation between order
statistics, numpy's default and `statistics.quantiles(method="inclusive")`).

L is measured when it can be: each reorder a refill cleared is one replenishment, refill time
minus reorder time. With at least `[kanban] min_samples` of them, L is their median; otherwise
the configured `lead_time_days`. A reorder still open longer than L is overdue.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

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
    supplier: str | None = None
    cards: int | None = None  # cards in the loop today (MACID.csv `cards`)

    @classmethod
    def of(cls, bin_: Bin) -> BinInfo:
        return cls(bin_.name, bin_.part, bin_.quantity, bin_.location, bin_.lead_time_days,
                   bin_.supplier, bin_.cards)


LeadSource = Literal["measured", "configured"]


@dataclass(frozen=True, slots=True)
class Replenishment:
    """One reorder that a refill cleared."""

    bin: str
    reordered: datetime
    refilled: datetime

    @property
    def days(self) -> float:
        return (self.refilled - self.reordered).total_seconds() / SECONDS_PER_DAY


@dataclass(frozen=True, slots=True)
class LeadTime:
    """The lead time of a bin: configured, measured (median of the replenishments) and used."""

    configured: float | None
    measured: float | None  # median replenishment time, None without any
    spread: float | None  # Q3 - Q1 of the replenishment times
    samples: int
    used: LeadSource | None  # which of the two the card formula and the overdue check use

    @property
    def days(self) -> float | None:
        """The value used, None when there is neither."""
        if self.used == "measured":
            return self.measured
        if self.used == "configured":
            return self.configured
        return None


def lead_time(
    configured: float | None, replenishment_days: Sequence[float], min_samples: int
) -> LeadTime:
    """Measured wins with at least `min_samples` replenishments; else configured, if any."""
    measured = spread = None
    if replenishment_days:
        q1, measured, q3 = quartiles(sorted(replenishment_days))
        spread = q3 - q1
    used: LeadSource | None
    if measured is not None and len(replenishment_days) >= min_samples:
        used = "measured"
    elif configured is not None:
        used = "configured"
    else:
        used = None
    return LeadTime(configured, measured, spread, len(replenishment_days), used)


def replenishments(
    reorders: Iterable[tuple[str, datetime]], refills: Iterable[tuple[str, datetime]]
) -> tuple[list[Replenishment], dict[str, datetime]]:
    """Pair reorders with the refills that cleared them, per bin, in time order.

    A refill clears the bin's open reorder (the first reorder since the last refill: repeats
    are not reorders); a refill with no open reorder (a bin refilled twice) measures nothing.
    Returns the replenishments and, per bin still open at the end, when its reorder was made.
    At one and the same instant the reorder comes first.
    """
    merged = sorted(
        [(t, 0, b) for b, t in reorders] + [(t, 1, b) for b, t in refills],
        key=lambda item: (item[0], item[1]),
    )
    opened: dict[str, datetime] = {}
    done: list[Replenishment] = []
    for time, kind, bin_ in merged:
        if kind == 0:
            opened.setdefault(bin_, time)
        elif bin_ in opened:
            done.append(Replenishment(bin_, opened.pop(bin_), time))
    return done, opened


def card_action(current: int | None, recommended: int | None) -> str | None:
    """`add 1 card`, `remove 2 cards` or `ok`; None when either count is unknown."""
    if current is None or recommended is None:
        return None
    change = recommended - current
    if change == 0:
        return "ok"
    count = abs(change)
    noun = "card" if count == 1 else "cards"
    return f"add {count} {noun}" if change > 0 else f"remove {count} {noun}"


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
    lead: LeadTime = LeadTime(None, None, None, 0, None)
    replenishment_days: tuple[float, ...] = ()  # each cleared reorder, oldest first
    overdue: bool = False  # a reorder open longer than the lead time used, at the report's time
    open_since: datetime | None = None  # when the open reorder was made

    @property
    def card_action(self) -> str | None:
        return card_action(self.info.cards, self.recommended_cards)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def spread_days(self) -> float | None:
        """The typical spread of the time between reorders: Q3 - Q1."""
        return self.iqr_days

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
    # Imported here: statistics brings fractions and decimal (0.6 MB), which the daemon, which
    # imports this module for lead times, never needs (issue 16: its peak memory).
    import statistics

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
    *,
    cleared: Iterable[Replenishment] = (),
    open_reorders: Mapping[str, datetime] | None = None,
    now: datetime | None = None,
    min_samples: int = 3,
) -> Report:
    """Per-bin statistics over [start, end]. Bins without presses are listed with zero reorders;
    presses for bins not in `bins` (a bin since removed from MACID.csv) are kept, unsized.

    `cleared` are the replenishments on record (all of them: a lead time is not a rate, so it is
    not cut to the window), `open_reorders` the bins open at `now` (default `end`) and since
    when: overdue when open longer than the lead time used."""
    days = (end - start).total_seconds() / SECONDS_PER_DAY
    at = now or end
    opened = dict(open_reorders or {})
    measured: dict[str, list[float]] = {}
    for item in sorted(cleared, key=lambda r: r.refilled):
        measured.setdefault(item.bin, []).append(item.days)
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
        samples = tuple(measured.get(name, ()))
        lead = lead_time(info.lead_time_days, samples, min_samples)
        demand = None
        cards = None
        if info.quantity is not None and days > 0:
            demand = len(stamps) * info.quantity / days
            if lead.days is not None and stamps:
                cards = recommended_cards(demand, lead.days, safety, info.quantity)
        since = opened.get(name)
        overdue = (
            since is not None and lead.days is not None
            and (at - since).total_seconds() > lead.days * SECONDS_PER_DAY
        )
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
                lead=lead,
                replenishment_days=samples,
                overdue=overdue,
                open_since=since,
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
