"""`dashkanban kanban report`, `dashkanban kanban refilled BIN` and `dashkanban kanban rules
install | uninstall` (the Smart Rules themselves are in kanban/rules.py)."""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from dashkanban.config import Settings, find_config, load_settings
from dashkanban.errors import ConfigError, DashkanbanError
from dashkanban.kanban.analytics import BinInfo, Report, analyze, replenishments
from dashkanban.kanban.bins import Bins, load_bins
from dashkanban.kanban.history import History, history_path
from dashkanban.kanban.loop import refill_from_cli

log = logging.getLogger(__name__)

_DAYS_BACK = re.compile(r"(\d+)\s*d?")


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """`--since`: a date (YYYY-MM-DD, midnight UTC), a full ISO time, or days back (`30d`, `30`)."""
    if text is None:
        return None
    value = text.strip()
    match = _DAYS_BACK.fullmatch(value)
    if match:
        return now - timedelta(days=int(match.group(1)))
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: expected a date (YYYY-MM-DD) or days back (e.g. 30d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ReportOptions:
    """`dashkanban kanban report`'s arguments (cli.py builds them)."""

    since: str | None
    out: Path | None
    from_cumulocity: bool
    json: bool
    config: Path | None = None


@dataclass(frozen=True, slots=True)
class RefilledOptions:
    """`dashkanban kanban refilled`'s arguments (cli.py builds them)."""

    bin: str
    timeout: float
    config: Path | None = None


def _load(config: Path | None, *, uplink: bool = True) -> tuple[Settings, Bins]:
    settings = load_settings(find_config(config), uplink=uplink)
    _, bins = load_bins(settings.buttons.file)
    return settings, bins


def local_report(settings: Settings, bins: Bins, since: datetime | None, now: datetime) -> Report:
    path = history_path(settings.outbox.path)
    if not path.exists():
        raise DashkanbanError(
            f"no Kanban history yet at {path} (the daemon and replay keep one with every press)"
        )
    with History.open(path, settings.kanban.history_days, now) as history:
        observations = history.observations(since)
        first = history.first_press()
        last = history.last_record()
        presses = history.reorder_presses()
        refills = history.refill_times()
    start, end = data_period(since, first, last, now)
    infos = {b.name: BinInfo.of(b) for b in bins}
    cleared, opened = replenishments([(b, t) for b, t, _ in presses], refills)
    return analyze(observations, infos, start, end, settings.kanban.safety, "local history",
                   cleared=cleared, open_reorders=opened, now=now,
                   min_samples=settings.kanban.min_samples)


def remote_report(settings: Settings, bins: Bins, since: datetime | None, now: datetime) -> Report:
    from dashkanban.c8y.rest import CumulocityRest
    from dashkanban.c8y.token import token_source_for
    from dashkanban.kanban.cumulocity import fetch_history

    c8y = settings.c8y
    # A certificate-only gateway reads with a device token (Bearer), fetched over MQTT.
    tokens = token_source_for(settings) if c8y.password is None else None
    date_from = since or now - timedelta(days=settings.kanban.history_days)
    with CumulocityRest.from_settings(c8y, tokens=tokens) as rest:
        remote = fetch_history(rest, settings.event.type, date_from, now)
    log.info(
        "read %d events from Cumulocity, %d of devices without a c8y_Kanban fragment",
        remote.events,
        remote.skipped,
    )
    # The fragments say what each bin is; MACID.csv fills in for a fragment not yet updated.
    infos = {b.name: BinInfo.of(b) for b in bins if b.name in remote.bins}
    infos.update(remote.bins)
    start, end = data_period(date_from, remote.first, remote.last, now)
    source = f"Cumulocity ({remote.events} events)"
    return analyze(remote.observations, infos, start, end, settings.kanban.safety, source,
                   cleared=remote.cleared, open_reorders=remote.open_reorders, now=now,
                   min_samples=settings.kanban.min_samples)


MIN_PERIOD = timedelta(days=1)


def data_period(
    since: datetime | None, first: datetime | None, last: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """The period the data covers: from the later of --since and the first press on record to
    the last press or refill on record, and at least one day. Not to `now`: a replayed capture
    gives the same demand every day it is reported, and time nobody watched is not counted as
    time without demand. The one-day floor keeps two presses a minute apart from reading as
    thousands a day."""
    candidates = [t for t in (since, first) if t is not None]
    start = max(candidates) if candidates else now
    end = max(last, start) if last is not None else start
    return start, max(end, start + MIN_PERIOD)


def report_command(args: ReportOptions) -> int:
    from rich.console import Console

    # A local report connects nowhere.
    settings, bins = _load(args.config, uplink=args.from_cumulocity)
    now = datetime.now(UTC)
    since = parse_since(args.since, now)
    if args.from_cumulocity:
        report = remote_report(settings, bins, since, now)
    else:
        report = local_report(settings, bins, since, now)
    as_json = args.json
    if as_json:
        from dashkanban.kanban.report import report_json

        print(json.dumps(report_json(report), ensure_ascii=False, indent=2))
    else:
        Console(file=sys.stdout, width=200).print(_table(report))
    if args.out is not None:
        write_html(report, args.out, now)
        print(f"wrote {args.out}", file=sys.stderr if as_json else sys.stdout)
    return 0


def _table(report: Report) -> object:
    from dashkanban.kanban.report import terminal_table

    return terminal_table(report)


def write_html(report: Report, out: Path, now: datetime) -> None:
    from dashkanban.kanban.report import render_html

    page = render_html(report, now)
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise DashkanbanError(f"cannot write {out}: {exc.strerror}") from None


def refilled_command(args: RefilledOptions) -> int:
    """Record the refill, queue its clears in the outbox and deliver them like `outbox flush`:
    exit 0 when delivered, 3 when they stay queued (for the daemon or a later flush)."""
    from dashkanban.compose import deliver_explained
    from dashkanban.kanban.wiring import check_mode, queue_pending_clears
    from dashkanban.outbox.store import Outbox

    settings, bins = _load(args.config)
    check_mode(settings)
    now = datetime.now(UTC)
    path = history_path(settings.outbox.path)
    with History.open(path, settings.kanban.history_days, now) as history:
        name, row, signal = refill_from_cli(bins, args.bin, history, now)
        print(f"bin {name} refilled at {now.isoformat(timespec='seconds')}")
        if not settings.kanban.alarms:
            history.mark_sent(row)  # no alarm was raised, so there is nothing to clear
            print("[kanban] alarms = no: no alarm to clear")
            return 0
        for publish in signal.publishes:
            for line in publish.lines:
                print(f"  clear: {publish.topic} {line}")
        with Outbox.from_settings(settings.outbox) as outbox:
            # This refill and any earlier one still pending (an interrupted run).
            queued = queue_pending_clears(history, outbox.put_lines)
            print(f"{queued} refill(s) queued in {settings.outbox.path}")
            delivered = deliver_explained(settings, outbox, timeout=args.timeout)
    if delivered is None:
        print("the running dashkanban service delivers it")
    else:
        print(f"delivered to {settings.c8y.tenant}")
    return 0


@dataclass(frozen=True, slots=True)
class RulesOptions:
    """`dashkanban kanban rules install|uninstall`'s arguments (cli.py builds them)."""

    dry_run: bool
    config: Path | None = None


def _rules_settings(args: RulesOptions) -> Settings:
    settings = load_settings(find_config(args.config))
    if settings.c8y.password is None:
        raise ConfigError(
            "kanban rules needs a password in [C8YMQTT] (REST uses Basic auth)", settings.path
        )
    return settings


def rules_install_command(args: RulesOptions) -> int:
    from dashkanban.c8y.rest import CumulocityRest
    from dashkanban.kanban.rules import install

    settings = _rules_settings(args)
    _, bins = load_bins(settings.buttons.file)
    if not any(b.supplier_email for b in bins):
        print(f"no bin has a supplier_email in {settings.buttons.file}: no rule to install")
    with CumulocityRest.from_settings(settings.c8y) as rest:
        for line in install(rest, bins, settings.gateway.serial, args.dry_run):
            print(line)
    return 0


def rules_uninstall_command(args: RulesOptions) -> int:
    from dashkanban.c8y.rest import CumulocityRest
    from dashkanban.kanban.rules import uninstall

    settings = _rules_settings(args)
    with CumulocityRest.from_settings(settings.c8y) as rest:
        lines = uninstall(rest, settings.gateway.serial, args.dry_run)
    for line in lines:
        print(line)
    if not lines:
        print(f"no Smart Rule of {settings.gateway.serial} to remove")
    return 0
