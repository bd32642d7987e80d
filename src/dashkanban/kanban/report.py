"""The Kanban report: a table for the terminal (rich) and one self-contained HTML file.

The HTML page embeds its three plots as base64 PNG data URIs, so it can be mailed or archived as a
single file: a timeline of reorders per bin, the distribution of the time between reorders, and
the replenishment times per bin against the bin's lead time.
matplotlib is imported only when a page is rendered (it takes a while to import), and through its
object API with the Agg canvas: no pyplot, no global backend switch, no display needed.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.table import Table

from dashkanban.kanban.analytics import BinStats, Report
from dashkanban.safetext import plain

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DASH = "—"


def _days(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f}"


def _number(value: float | None, places: int = 1) -> str:
    if value is None:
        return DASH
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{places}f}"


def lead_cell(stats: BinStats) -> str:
    """`1.5 measured (4)` or `2 configured`: the lead time the cards and the overdue check use."""
    lead = stats.lead
    if lead.used is None:
        return DASH
    value = _number(lead.days)
    if lead.used == "measured":
        return f"{value} measured ({lead.samples})"
    if lead.samples:
        return f"{value} configured ({lead.samples} measured)"
    return f"{value} configured"


def row_of(stats: BinStats) -> list[str]:
    """One table row, the same cells in the terminal and on the page."""
    info = stats.info
    return [
        info.name,
        info.part or DASH,
        info.location or DASH,
        info.supplier or DASH,
        str(stats.reorders),
        str(stats.repeats),
        _days(stats.median_days),
        _days(stats.spread_days),
        _number(stats.demand_per_day, 2),
        lead_cell(stats),
        "yes" if stats.overdue else "no",
        _number(info.quantity),
        DASH if info.cards is None else str(info.cards),
        DASH if stats.recommended_cards is None else str(stats.recommended_cards),
        stats.card_action or DASH,
    ]


HEADERS = [
    "Bin",
    "Part",
    "Location",
    "Supplier",
    "Reorders",
    "Repeats",
    "Median days between",
    "Typical spread (days)",
    "Demand / day",
    "Lead time (d)",
    "Overdue",
    "Qty / container",
    "Cards now",
    "Cards needed",
    "Action",
]
_TEXT_COLUMNS = ("Bin", "Part", "Location", "Supplier", "Lead time (d)", "Action")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def report_json(report: Report) -> dict[str, Any]:
    """`kanban report --json`: one object, keys in this order (docs/kanban.md)."""
    bins = []
    for stats in report.bins:
        info, lead = stats.info, stats.lead
        bins.append({
            "bin": info.name,
            "part": info.part,
            "location": info.location,
            "supplier": info.supplier,
            "reorders": stats.reorders,
            "repeats": stats.repeats,
            "demand_per_day": _rounded(stats.demand_per_day),
            "lead_time_days": {
                "configured": lead.configured,
                "measured": _rounded(lead.measured),
                "samples": lead.samples,
                "used": lead.used,
            },
            "overdue": stats.overdue,
            "cards": {
                "current": info.cards,
                "recommended": stats.recommended_cards,
                "action": stats.card_action,
            },
        })
    return {
        "from": report.start.isoformat(timespec="seconds"),
        "to": report.end.isoformat(timespec="seconds"),
        "source": report.source,
        "bins": bins,
    }


def period_text(report: Report) -> str:
    return (
        f"{report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} "
        f"({report.days:.1f} days), safety {report.safety:.0%}, from {report.source}"
    )


def terminal_table(report: Report) -> Table:
    table = Table(title=f"Kanban report: {period_text(report)}", title_justify="left")
    for header in HEADERS:
        numeric = header not in _TEXT_COLUMNS
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for stats in report.bins:
        table.add_row(*map(plain, row_of(stats)))  # bin and part names are data, never markup
    return table


# ---------------------------------------------------------------------------------------------
# The HTML page


def _png(figure: Figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def timeline_png(report: Report) -> str:
    """Reorders per bin over time: one row per bin, one mark per reorder."""
    from matplotlib import dates
    from matplotlib.figure import Figure

    bins = report.bins
    figure = Figure(figsize=(10, 1.2 + 0.5 * max(len(bins), 1)), layout="constrained")
    axes = figure.add_subplot()
    for index, stats in enumerate(bins):
        if stats.times:
            axes.scatter(
                list(stats.times),  # type: ignore[arg-type]
                [index] * len(stats.times),
                marker="|",
                s=300,
                linewidths=2,
                color="#1f77b4",
            )
    axes.set_yticks(range(len(bins)), [s.name for s in bins])
    axes.set_ylim(-0.7, max(len(bins), 1) - 0.3)
    axes.invert_yaxis()
    axes.set_xlim(report.start, report.end)  # type: ignore[arg-type]
    locator = dates.AutoDateLocator()  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    axes.set_title("Reorders per bin")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def intervals_png(report: Report) -> str:
    """The time between consecutive reorders, per bin: a box (quartiles) with every interval."""
    from matplotlib.figure import Figure

    bins = [s for s in report.bins if s.intervals_days]
    figure = Figure(figsize=(10, 1.2 + 0.5 * max(len(bins), 1)), layout="constrained")
    axes = figure.add_subplot()
    if bins:
        # Drawn from our own quartiles rather than with boxplot(), so the picture shows exactly
        # the numbers in the table: box Q1..Q3, a line at the median, whiskers to the extremes.
        for index, stats in enumerate(bins):
            values = stats.intervals_days
            q1, median, q3 = stats.q1_days, stats.median_days, stats.q3_days
            if q1 is None or median is None or q3 is None:  # pragma: no cover - has intervals
                continue
            axes.hlines(index, min(values), max(values), color="#555555", linewidth=1)
            axes.barh(index, max(q3 - q1, 0.02), left=q1, height=0.5, color="#1f77b4",
                      alpha=0.35, edgecolor="#1f77b4")
            axes.vlines(median, index - 0.25, index + 0.25, color="#d62728", linewidth=2)
            axes.scatter(values, [index] * len(values), s=16, color="#1f77b4", zorder=3)
        axes.set_yticks(range(len(bins)), [s.name for s in bins])
        axes.set_ylim(-0.7, len(bins) - 0.3)
        axes.invert_yaxis()
    else:
        axes.text(0.5, 0.5, "not enough reorders yet (a bin needs two)", ha="center",
                  va="center", transform=axes.transAxes)
        axes.set_yticks([])
    axes.set_xlabel("days between reorders")
    axes.set_title("Time between reorders")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def replenishment_png(report: Report) -> str:
    """Replenishment time (refill minus reorder) per bin, one dot each, against the lead time:
    a diamond at the configured lead time and a red line at the one used."""
    from matplotlib.figure import Figure

    bins = [s for s in report.bins if s.replenishment_days or s.lead.days is not None]
    figure = Figure(figsize=(10, 1.2 + 0.5 * max(len(bins), 1)), layout="constrained")
    axes = figure.add_subplot()
    if bins:
        for index, stats in enumerate(bins):
            values = stats.replenishment_days
            if values:
                axes.scatter(values, [index] * len(values), s=16, color="#1f77b4", zorder=3)
            if stats.lead.configured is not None:
                axes.scatter([stats.lead.configured], [index], marker="D", s=40,
                             facecolors="none", edgecolors="#555555", zorder=4)
            used = stats.lead.days
            if used is not None:
                axes.vlines(used, index - 0.3, index + 0.3, color="#d62728", linewidth=2)
        axes.set_yticks(range(len(bins)), [s.name for s in bins])
        axes.set_ylim(-0.7, len(bins) - 0.3)
        axes.invert_yaxis()
    else:
        axes.text(0.5, 0.5, "no refilled reorders and no lead times yet", ha="center",
                  va="center", transform=axes.transAxes)
        axes.set_yticks([])
    axes.set_xlabel("days from reorder to refill")
    axes.set_title("Replenishment time against lead time")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.45em; }
th { background: #f0f0f0; } td.n { text-align: right; }
td.cards { font-weight: bold; } img { max-width: 100%; display: block; margin: 1em 0; }
.note { color: #555; font-size: 0.9em; }
"""


def render_html(report: Report, generated: datetime) -> str:
    """The whole page as one string."""
    e = html.escape
    rows = []
    for stats in report.bins:
        cells = row_of(stats)
        tds = []
        for header, cell in zip(HEADERS, cells, strict=True):
            css = "cards n" if header == "Cards needed" else (
                "" if header in _TEXT_COLUMNS else "n")
            tds.append(f'<td class="{css}">{e(cell)}</td>' if css else f"<td>{e(cell)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    head = "".join(f"<th>{e(h)}</th>" for h in HEADERS)
    timeline = timeline_png(report)
    intervals = intervals_png(report)
    replenishment = replenishment_png(report)
    safety = f"{report.safety:g}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Kanban report</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Kanban report</h1>
<p>{e(period_text(report))}. Generated {e(generated.isoformat(timespec="seconds"))}.</p>
<table id="bins">
<thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<p class="note">Cards needed = ceil(D &times; L &times; (1 + {e(safety)}) / C): D demand per
day, L lead time in days (measured: the median time from reorder to refill, once a bin has enough
refills; otherwise the lead time in MACID.csv), C quantity per container. A repeat is a press
while the bin's reorder was still open; it is not counted as demand. Overdue: a reorder open
longer than its lead time.</p>
<h2>Reorders per bin</h2>
<img id="timeline" alt="Timeline of reorders per bin" src="data:image/png;base64,{timeline}">
<h2>Time between reorders</h2>
<img id="intervals" alt="Distribution of the days between reorders"
 src="data:image/png;base64,{intervals}">
<p class="note">Box: the middle half of the intervals (the typical spread) with the median as a
line; whiskers: shortest and longest; dots: every interval. A wide box means irregular demand:
keep a larger safety factor for that bin.</p>
<h2>Replenishment time against lead time</h2>
<img id="replenishment" alt="Days from reorder to refill per bin, against the lead time"
 src="data:image/png;base64,{replenishment}">
<p class="note">Dots: each refilled reorder, days from reorder to refill; diamond: the lead time
in MACID.csv; red line: the lead time used for the cards. Dots right of the line are late
deliveries.</p>
</body>
</html>
"""
