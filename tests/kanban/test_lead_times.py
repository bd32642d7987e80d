"""Issue 18's pure parts and the loop's state: replenishments, the lead time used, card actions,
the overdue check (once per open reorder, across a restart, cleared by any refill), the new
MACID.csv columns and config keys, and the Smart Rules' specs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dashkanban.c8y.smartrest import SmartRestLine
from dashkanban.config import KanbanSettings, load_settings
from dashkanban.detect.presses import Press
from dashkanban.errors import ConfigError
from dashkanban.kanban.alarms import DevicePublish
from dashkanban.kanban.analytics import (
    LeadTime,
    Replenishment,
    card_action,
    lead_time,
    replenishments,
)
from dashkanban.kanban.bins import parse_bins
from dashkanban.kanban.history import History
from dashkanban.kanban.loop import KanbanLoop, find_overdue, refill_from_cli
from dashkanban.kanban.rules import RuleSpec, rule_specs
from dashkanban.kanban.wiring import queue_overdue_at_frames
from dashkanban.sandbox.smartrules import fill

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
MACID = (
    "Name, MAC-Address, bin, part, quantity, location, supplier, lead_time_days, role, cards, "
    "supplier_email\n"
    "screws, ac:63:be:12:34:56, A3, M6 screws, 50, Aisle 2, Würth, 2, , 3, orders@wuerth.example\n"
    "screws-2, ac:63:be:12:34:57, A3, , , , , , , , orders@wuerth.example\n"
    "screws-full, ac:63:be:12:34:58, A3, , , , , , refill, ,\n"
    "ties, fc:a6:67:0a:0b:0c, B1, Cable ties, 100, Aisle 4, , 3, , 1, orders@wuerth.example\n"
    "gloves, 68:54:fd:01:02:03, C7, Gloves, 12, Gate 1, , , , , sales@ansell.example\n"
)
ON = KanbanSettings(alarms=True, severity="MAJOR", safety=0.2, history_days=36500)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def test_replenishments_pair_each_reorder_with_the_refill_that_cleared_it() -> None:
    done, opened = replenishments(
        [("A3", day(0)), ("A3", day(0.5)),  # the second is a repeat: A3 still open
         ("A3", day(3)), ("B1", day(1)), ("C7", day(2))],
        [("A3", day(2)), ("A3", day(2.5)),  # refilled twice: the second measures nothing
         ("A3", day(3)),  # at the same instant as a reorder: the reorder comes first
         ("B1", day(4))],
    )
    assert [(r.bin, r.days) for r in done] == [("A3", 2.0), ("A3", 0.0), ("B1", 3.0)]
    assert opened == {"C7": day(2)}
    assert Replenishment("A3", day(1), day(2.5)).days == 1.5


def test_lead_time_uses_the_measured_median_from_min_samples() -> None:
    assert lead_time(2.0, [1.0, 3.0], 3) == LeadTime(2.0, 2.0, 1.0, 2, "configured")
    assert lead_time(2.0, [1.0, 3.0, 1.5], 3) == LeadTime(2.0, 1.5, 1.0, 3, "measured")
    assert lead_time(2.0, [1.0, 3.0, 1.5], 3).days == 1.5
    assert lead_time(None, [1.0], 3) == LeadTime(None, 1.0, 0.0, 1, None)
    assert lead_time(None, [1.0], 3).days is None
    assert lead_time(None, [1.0], 1).days == 1.0
    assert lead_time(4.0, [], 3).days == 4.0


def test_card_actions() -> None:
    assert card_action(2, 3) == "add 1 card"
    assert card_action(1, 4) == "add 3 cards"
    assert card_action(5, 3) == "remove 2 cards"
    assert card_action(2, 1) == "remove 1 card"
    assert card_action(2, 2) == "ok"
    assert card_action(None, 2) is None
    assert card_action(2, None) is None


def test_new_columns_and_their_errors(tmp_path: Path) -> None:
    _, bins = parse_bins(MACID, Path("MACID.csv"))
    a3 = bins.get("A3")
    assert a3 is not None
    assert (a3.cards, a3.supplier_email) == (3, "orders@wuerth.example")
    for line, error in (
        ("b, ac:63:be:00:00:09, Z1, , , , , , , 0, ", "cards '0' must be at least 1"),
        ("b, ac:63:be:00:00:09, Z1, , , , , , , two, ", "cards 'two' is not a whole number"),
        ("b, ac:63:be:00:00:09, Z1, , , , , , , , orders", "supplier_email 'orders' is not an "
         "e-mail address (expected e.g. orders@example.com)"),
        ('b, ac:63:be:00:00:09, Z1, , , , , , , , "a@b.c, x@y.z"', "supplier_email 'a@b.c, "
         "x@y.z' is not an e-mail address (expected e.g. orders@example.com)"),
        ("b, ac:63:be:00:00:09, , , , , , , , 2, ", "button 'b' has cards but no bin; add the "
         "bin it belongs to"),
        ("b, ac:63:be:00:00:09, A3, , , , , , , 4, ", "bin 'A3': cards 4 on 'b' differs from 3 "
         "on 'screws'"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_bins(MACID + line + "\n", Path("MACID.csv"))
        assert str(info.value) == f"MACID.csv:7: {error}"


def test_config_keys(tmp_path: Path) -> None:
    base = ("[C8YMQTT]\ntenant = example.com\ntenantID = t1\nuser = u\npassword = p\n"
            "port = 8883\n\n[kanban]\n")
    path = tmp_path / "config.ini"
    path.write_text(base)
    path.chmod(0o600)
    kanban = load_settings(path, {}).kanban
    assert (kanban.min_samples, kanban.overdue_severity) == (3, "CRITICAL")
    path.write_text(base + "min_samples = 5\noverdue_severity = warning\n")
    kanban = load_settings(path, {}).kanban
    assert (kanban.min_samples, kanban.overdue_severity) == (5, "WARNING")
    path.write_text(base + "min_samples = 0\n")
    with pytest.raises(ConfigError, match=r"config\.ini:9: .*min_samples"):
        load_settings(path, {})
    path.write_text(base + "overdue_severity = loud\n")
    with pytest.raises(ConfigError, match=r"config\.ini:9: .*overdue_severity"):
        load_settings(path, {})


def test_find_overdue_is_pure() -> None:
    _, bins = parse_bins(MACID, Path("MACID.csv"))
    opened = {"A3": (day(0), "ac63be123456"), "B1": (day(0), "fca6670a0b0c"),
              "C7": (day(0), "6854fd010203")}
    # A3: 2 days configured; B1: 3 configured, but 3 measured samples of 0.5 days win; C7: no
    # lead time at all, never overdue.
    samples = {"B1": [0.5, 0.5, 0.5]}
    assert [d.bin for d in find_overdue(bins, opened, samples, {}, 3, day(1))] == ["B1"]
    assert [(d.bin, d.lead_days) for d in find_overdue(bins, opened, samples, {}, 3, day(2.5))
            ] == [("A3", 2.0), ("B1", 0.5)]
    assert find_overdue(bins, opened, samples, {"A3": "x", "B1": "y"}, 3, day(9)) == []
    assert find_overdue(bins, opened, {}, {}, 3, day(2)) == []  # exactly on time is not late


def test_loop_raises_once_remembers_across_restart_and_clears_on_refill(tmp_path: Path) -> None:
    registry, bins = parse_bins(MACID, Path("MACID.csv"))
    button = {b.name: b for b in registry}
    path = tmp_path / "history.sqlite3"
    text = ('301,c8y_KanbanOverdue,"Bin A3 (M6 screws, Würth) overdue by 0.5 days: reordered '
            '2026-11-02 08:00 UTC, lead time 2 days",2026-11-04T20:00:00.000+00:00')
    with History.open(path, 36500, T0) as history:
        loop = KanbanLoop(bins, ON, history)
        loop.on_press(Press(button["screws"], day(0), "dhcp"))
        loop.on_press(Press(button["screws-2"], day(0.2), "dhcp"))  # a repeat: not the opener
        assert loop.overdue(day(1.9)) == ()
        assert loop.overdue(day(2.5)) == (DevicePublish("ac63be123456", (text,)),)
        assert loop.overdue(day(3)) == ()  # once per open reorder
    with History.open(path, 36500, T0) as history:
        loop = KanbanLoop(bins, ON, history)  # a restart: the history knows it was raised
        assert loop.overdue(day(4)) == ()
        signal = loop.on_press(Press(button["screws-full"], day(5), "arp"))
        assert signal.publishes == (
            DevicePublish("ac63be123456", ("306,c8y_KanbanReorder",)),
            DevicePublish("ac63be123457", ("306,c8y_KanbanReorder",)),
            DevicePublish("ac63be123456", ("306,c8y_KanbanOverdue",)),
        )
        assert history.open_overdue() == {}
        # The next reorder is a new open reorder: it may be flagged again, on its own button.
        loop.on_press(Press(button["screws-2"], day(6), "dhcp"))
        [raised] = loop.overdue(day(9))
        assert raised.serial == "ac63be123457"
        # The operation clears it too, after its 503.
        outcome = loop.on_operation(SmartRestLine("9101", ("ac63be123456", "A3")), "gw", day(10))
        assert outcome is not None
        assert outcome.publishes[-1] == DevicePublish("ac63be123457", ("306,c8y_KanbanOverdue",))
        # Two replenishments measured: 5 days (day 0 to 5) and 4 days (day 6 to 10).
        assert loop._samples == {"A3": [5.0, 4.0]}


def test_cli_refill_clears_the_overdue_alarm_and_alarms_off_raises_nothing(
    tmp_path: Path,
) -> None:
    registry, bins = parse_bins(MACID, Path("MACID.csv"))
    button = {b.name: b for b in registry}
    with History.open(tmp_path / "history.sqlite3", 36500, T0) as history:
        loop = KanbanLoop(bins, ON, history)
        loop.on_press(Press(button["ties"], day(0), "dhcp"))
        assert len(loop.overdue(day(4))) == 1
        _, _, signal = refill_from_cli(bins, "b1", history, day(5))
        assert signal.publishes == (
            DevicePublish("fca6670a0b0c", ("306,c8y_KanbanReorder",)),
            DevicePublish("fca6670a0b0c", ("306,c8y_KanbanOverdue",)),
        )
        assert history.open_overdue() == {}
    # While a daemon's loop runs, `kanban refilled` (another process, the same history) closes
    # the bin: the daemon's next check does not flag it.
    with History.open(tmp_path / "daemon.sqlite3", 36500, T0) as history:
        loop = KanbanLoop(bins, ON, history)
        loop.on_press(Press(button["screws"], day(0), "dhcp"))
        with History.open(tmp_path / "daemon.sqlite3", 36500, T0) as shell:
            refill_from_cli(bins, "A3", shell, day(1))
        assert loop.overdue(day(9)) == ()
        assert loop.open_bins == frozenset()
        assert loop.on_press(Press(button["screws"], day(10), "dhcp")).kind == "reorder"
    off = KanbanSettings(alarms=False, severity="MAJOR", safety=0.2, history_days=36500)
    with History.open(tmp_path / "off.sqlite3", 36500, T0) as history:
        loop = KanbanLoop(bins, off, history)
        loop.on_press(Press(button["ties"], day(0), "dhcp"))
        assert loop.overdue(day(9)) == ()


def test_rule_specs_two_per_address() -> None:
    _, bins = parse_bins(MACID, Path("MACID.csv"))
    specs = rule_specs(bins, "gw-1")
    assert specs == [
        RuleSpec("dashkanban gw-1: reorder mail to orders@wuerth.example", "reorder",
                 "orders@wuerth.example", ("A3", "B1"),
                 ("ac63be123456", "ac63be123457", "fca6670a0b0c")),
        RuleSpec("dashkanban gw-1: overdue mail to orders@wuerth.example", "overdue",
                 "orders@wuerth.example", ("A3", "B1"),
                 ("ac63be123456", "ac63be123457", "fca6670a0b0c")),
        RuleSpec("dashkanban gw-1: reorder mail to sales@ansell.example", "reorder",
                 "sales@ansell.example", ("C7",), ("6854fd010203",)),
        RuleSpec("dashkanban gw-1: overdue mail to sales@ansell.example", "overdue",
                 "sales@ansell.example", ("C7",), ("6854fd010203",)),
    ]
    assert specs[1].body(["12", "3"]) == {
        "ruleTemplateName": "onAlarmSendEmail",
        "name": "dashkanban gw-1: overdue mail to orders@wuerth.example",
        "config": {"alarmType": "c8y_KanbanOverdue", "to": "orders@wuerth.example",
                   "subject": "Kanban delivery overdue: #{text}",
                   "text": "#{text}\n\nThe bin is still waiting for this delivery. Reported by "
                           "the Kanban button #{source.name}."},
        "enabled": True,
        "enabledSources": ["12", "3"],
    }


def test_sandbox_placeholders() -> None:
    values = {"text": "Reorder A3", "severity": "MAJOR", "source": {"id": "7", "name": "screws"}}
    assert fill("#{severity} from #{source.name}: #{text} #{nope} #{source.x}", values) == (
        "MAJOR from screws: Reorder A3 #{nope} #{source.x}")


def test_checks_at_frames_only_where_a_deadline_passed(tmp_path: Path) -> None:
    registry, bins = parse_bins(MACID, Path("MACID.csv"))
    button = {b.name: b for b in registry}
    with History.open(tmp_path / "history.sqlite3", 36500, T0) as history:
        loop = KanbanLoop(bins, ON, history)
        assert loop.next_deadline() is None
        loop.on_press(Press(button["screws"], day(0), "dhcp"))  # A3: 2 days
        loop.on_press(Press(button["ties"], day(0.5), "dhcp"))  # B1: 3 days
        assert loop.next_deadline() == day(2)
        queued: list[tuple[tuple[tuple[str | None, str], ...], datetime]] = []

        def queue(lines: Sequence[tuple[str | None, str]], when: datetime) -> None:
            queued.append((tuple(lines), when))

        times = [day(d).timestamp() for d in (1, 2, 2.25, 3, 3.5, 4, 5)]
        # Up to day 2.1: the frame on day 2 is exactly on time, not late: nothing.
        assert queue_overdue_at_frames(loop, queue, times, float("-inf"), day(2.1).timestamp()
                                       ) == 0
        # On to day 4: A3 at the frame of day 2.25, B1 (deadline 3.5) at the frame of day 4.
        assert queue_overdue_at_frames(loop, queue, times, day(2.1).timestamp(),
                                       day(4).timestamp()) == 2
        assert [(lines[0][0], when) for lines, when in queued] == [
            ("ac63be123456", day(2.25)), ("fca6670a0b0c", day(4))]
        assert loop.next_deadline() is None


def test_an_overdue_alarm_refused_by_a_full_outbox_is_raised_at_the_next_check(
    tmp_path: Path,
) -> None:
    """The alarm is recorded as raised only once the outbox took it: a full outbox (a real one,
    max_rows 1) refuses it, the history does not have it, and the next check, with room again,
    queues it, once."""
    from dashkanban.kanban.wiring import queue_overdue
    from dashkanban.outbox.store import Outbox, OutboxFullError
    from tests.outbox_writer import event_for

    registry, bins = parse_bins(MACID, Path("MACID.csv"))
    button = {b.name: b for b in registry}
    text = ('301,c8y_KanbanOverdue,"Bin B1 (Cable ties) overdue by 1.5 days: reordered '
            '2026-11-02 08:00 UTC, lead time 3 days",2026-11-06T20:00:00.000+00:00')
    with (History.open(tmp_path / "history.sqlite3", 36500, T0) as history,
          Outbox.open(tmp_path / "outbox.sqlite3", max_rows=1) as outbox):
        loop = KanbanLoop(bins, ON, history)
        loop.on_press(Press(button["ties"], day(0), "dhcp"))
        full = outbox.put(event_for(1))
        with pytest.raises(OutboxFullError):
            queue_overdue(loop, outbox.put_lines, day(4))
        assert history.open_overdue() == {}
        assert loop.next_deadline() == day(3)  # still due
        outbox.ack(full)  # Cumulocity took the press: room again
        assert queue_overdue(loop, outbox.put_lines, day(4.5)) == 1
        [row] = outbox.peek()
        assert row.event is None
        assert row.other_lines == (("fca6670a0b0c", text),)
        assert history.open_overdue() == {"B1": "fca6670a0b0c"}
        assert queue_overdue(loop, outbox.put_lines, day(5)) == 0  # once per open reorder
        assert len(outbox.peek()) == 1
