"""The pure parts of the Kanban wiring: start-up lines, the lines a press carries, the mode check,
and how the uplink turns (serial, line) pairs into PUBLISHes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashkanban.c8y.mqtt import Outgoing, UnsendableError, event_messages, lines_messages
from dashkanban.c8y.smartrest import MAX_MESSAGE_BYTES, SmartRestLine
from dashkanban.config import KanbanSettings, load_settings
from dashkanban.detect.events import Event
from dashkanban.detect.presses import Press
from dashkanban.errors import ConfigError
from dashkanban.kanban.alarms import clear_lines
from dashkanban.kanban.bins import parse_bins
from dashkanban.kanban.history import History
from dashkanban.kanban.loop import KanbanLoop
from dashkanban.kanban.wiring import (
    OperationRouter,
    make_uplink,
    press_lines,
    queue_pending_clears,
    startup_publishes,
)

MACID = (
    "Name, MAC-Address, bin, part, quantity, location, supplier, lead_time_days, role\n"
    "screws, ac:63:be:12:34:56, A3, M6 screws, 50, Aisle 2, Würth, 2,\n"
    "screws-full, ac:63:be:12:34:58, A3, , , , , , refill\n"
    "ties, fc:a6:67:0a:0b:0c, B1, Cable ties, 100, Aisle 4, , 3,\n"
    "plain, 02:00:00:00:00:01\n"
)
T0 = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC)
ON = KanbanSettings(alarms=True, severity="MAJOR", safety=0.2, history_days=730)
EVENT = Event(time=T0, mac="ac:63:be:12:34:58", serial="ac63be123458", name="screws-full",
              type="c8y_MAC_Event", text="screws-full pressed", trigger="dhcp")


def test_startup_publishes_collection_children_then_supported_operations() -> None:
    _, bins = parse_bins(MACID, Path("MACID.csv"))
    assert startup_publishes(bins) == [
        ("s/ut/dashkanban-v2", "11,9101,,c8y_KanbanRefilled,id,c8y_KanbanRefilled.bin\n"
                               "11,9102,,c8y_Command,id,c8y_Command.text"),
        ("s/us", "101,ac63be123456,screws,c8y_DashButton\n"
                 "101,ac63be123458,screws-full,c8y_DashButton\n"
                 "101,fca6670a0b0c,ties,c8y_DashButton"),
        ("s/us/ac63be123456", "114,c8y_KanbanRefilled"),
        ("s/us/fca6670a0b0c", "114,c8y_KanbanRefilled"),
    ]


def test_press_lines_own_and_other_devices(tmp_path: Path) -> None:
    registry, bins = parse_bins(MACID, Path("MACID.csv"))
    b = {x.name: x for x in registry}
    with History.open(tmp_path / "history.sqlite3", 730, T0) as history:
        loop = KanbanLoop(bins, ON, history)
        assert press_lines(loop, Press(b["screws"], T0, "dhcp")) == (
            ("302,c8y_KanbanReorder,Reorder 50 x M6 screws for bin A3 (Aisle 2),"
             "2026-11-26T08:00:01.234+00:00",), ())
        assert press_lines(loop, Press(b["screws-full"], T0, "dhcp")) == (
            (), (("ac63be123456", "306,c8y_KanbanReorder"),))
        assert press_lines(loop, Press(b["plain"], T0, "dhcp")) == ((), ())
        assert history.counts() == {"reorder": 1, "refill": 1, "press": 1}


def test_pending_clears_are_queued_once_and_marked_sent(tmp_path: Path) -> None:
    _, bins = parse_bins(MACID, Path("MACID.csv"))
    queued: list[tuple[tuple[tuple[str | None, str], ...], datetime]] = []
    with History.open(tmp_path / "history.sqlite3", 730, T0) as history:
        bin_ = bins.find("B1")
        assert bin_ is not None
        history.record_refill("B1", T0, "cli", clear_lines(bin_))
        assert queue_pending_clears(history, lambda lines, t: queued.append((tuple(lines), t))) == 1
        assert queue_pending_clears(history, lambda lines, t: queued.append((tuple(lines), t))) == 0
    assert queued == [((("fca6670a0b0c", "306,c8y_KanbanReorder"),), T0)]


def test_operation_router_queues_status_and_clears_as_one_row() -> None:
    _, bins = parse_bins(MACID, Path("MACID.csv"))
    router = OperationRouter(KanbanLoop(bins, ON, None), "gw-1", clock=lambda: T0)
    queued: list[tuple[tuple[tuple[str | None, str], ...], datetime]] = []
    router.queue = lambda lines, t: queued.append((tuple(lines), t))
    router(SmartRestLine("510", ("gw-1",)))  # not ours: nothing
    router(SmartRestLine("9101", ("gw-1", "10042", "a3")))
    router(SmartRestLine("9101", ("gw-1", "10042", "a3")))  # delivered again: nothing more
    assert queued == [(((None, "504,10042"),
                        ("ac63be123456", "306,c8y_KanbanReorder"),
                        (None, "506,10042")), T0)]


def test_make_uplink_leaves_the_operation_handler_to_the_caller(tmp_path: Path) -> None:
    """The router is not the uplink's `on_operation`: it raises OutboxError, and a handler that
    raises ends the link (a bug). The daemon sets a handler that runs it off the loop and logs
    that error (commands/run.py); `make_uplink` used to pass the raw router, which the daemon
    always replaced."""
    config = tmp_path / "config.ini"
    config.touch(mode=0o600)
    config.write_text("[C8YMQTT]\ntenant = example.com\ntenantID = t1\nuser = u\npassword = pw\n"
                      "[gateway]\nserial = gw-1\n[kanban]\nalarms = yes\n")
    settings = load_settings(config)
    _, bins = parse_bins(MACID, Path("MACID.csv"))
    uplink, router = make_uplink(settings, KanbanLoop(bins, ON, None))
    assert uplink.on_operation is None
    assert router is not None
    assert router.gateway_serial == "gw-1"
    assert uplink.extra_subscriptions == ("s/dc/dashkanban-v2",)
    assert uplink.startup_publishes == tuple(Outgoing(t, p) for t, p in startup_publishes(bins))


def test_lines_messages_group_consecutive_lines_of_one_device() -> None:
    assert lines_messages([(None, "501,x"), ("a", "306,y"), ("a", "306,z"), (None, "503,x")]) == [
        Outgoing("s/us", "501,x"), Outgoing("s/us/a", "306,y\n306,z"), Outgoing("s/us", "503,x"),
    ]
    assert lines_messages([]) == []


def test_event_messages_with_other_lines() -> None:
    assert event_messages(EVENT, (), gateway=True, announce=False,
                          other_lines=[("ac63be123456", "306,c8y_KanbanReorder")]) == [
        Outgoing("s/us/ac63be123458",
                 "400,c8y_MAC_Event,screws-full pressed,2026-11-26T08:00:01.234+00:00"),
        Outgoing("s/us/ac63be123456", "306,c8y_KanbanReorder"),
    ]
    with pytest.raises(UnsendableError, match="need \\[gateway\\] mode = gateway"):
        event_messages(EVENT, (), gateway=False, announce=False, other_lines=[("a", "306,y")])


def test_alarms_need_gateway_mode(tmp_path: Path) -> None:
    config = tmp_path / "config.ini"
    config.touch(mode=0o600)
    config.write_text("[C8YMQTT]\ntenant = example.com\ntenantID = t1\nuser = u\npassword = pw\n"
                      "[gateway]\nmode = per-device\n[kanban]\nalarms = yes\n")
    # Refused at load, by every command alike, with the line (issue 14; was refused only when
    # the Kanban loop was opened, so `check` passed what `replay` then refused).
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert str(info.value) == (
        f"{config}:9: [kanban] alarms = yes needs [gateway] mode = gateway (a refill clears "
        "alarms on other buttons' devices, which per-device mode cannot address)"
    )


def test_startup_children_are_split_within_the_size_limit() -> None:
    rows = "".join(f"b{i:03d}-{'x' * 40}, 02:00:00:00:{i // 256:02x}:{i % 256:02x}, B{i}\n"
                   for i in range(400))
    _, bins = parse_bins("Name, MAC-Address, bin\n" + rows, Path("MACID.csv"))
    children = [p for t, p in startup_publishes(bins) if t == "s/us"]
    assert len(children) > 1
    assert all(len(p.encode()) <= MAX_MESSAGE_BYTES for p in children)
    lines = [line for p in children for line in p.split("\n")]
    assert lines == [f"101,02000000{i // 256:02x}{i % 256:02x},b{i:03d}-{'x' * 40},c8y_DashButton"
                     for i in range(400)]
