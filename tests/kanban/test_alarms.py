from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from dashkanban.c8y.smartrest import decode, join_lines
from dashkanban.config import KanbanSettings
from dashkanban.detect.buttons import Button
from dashkanban.detect.presses import Press
from dashkanban.kanban.alarms import (
    DevicePublish,
    Signal,
    alarm_text,
    handle_operation,
    signal_for,
    supported_operations,
    template_lines,
)
from dashkanban.kanban.bins import Bin, Bins, parse_bins
from dashkanban.kanban.history import History
from dashkanban.kanban.loop import KanbanLoop, refill_from_cli
from dashkanban.kanban.wiring import OperationRouter, queue_pending_clears
from dashkanban.outbox.store import Outbox, OutboxFullError
from tests.brokers import Mosquitto

MACID = (
    "Name, MAC-Address, bin, part, quantity, location, supplier, lead_time_days, role\n"
    "screws, ac:63:be:12:34:56, A3, M6 screws, 50, Aisle 2, Würth, 2,\n"
    "screws-full, ac:63:be:12:34:58, A3, , , , , , refill\n"
    "ties, fc:a6:67:0a:0b:0c, B1, \"Cable ties, 200mm\", 100, Aisle 4, , 3,\n"
    "ties-2, fc:a6:67:0a:0b:0d, B1, , , , , , reorder\n"
    "plain, 68:54:fd:01:02:03\n"
)
T0 = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC)
ON = KanbanSettings(alarms=True, severity="MAJOR", safety=0.2, history_days=730)


@pytest.fixture
def setup() -> tuple[dict[str, Button], Bins]:
    registry, bins = parse_bins(MACID, Path("MACID.csv"))
    return {b.name: b for b in registry}, bins


def press(button: Button, minutes: float) -> Press:
    return Press(button, T0 + timedelta(minutes=minutes), "dhcp")


def test_alarm_text_variants() -> None:
    full = Bin("A3", "M6 screws", 50, "Aisle 2", "Würth", 2.0, ())
    assert alarm_text(full) == "Reorder 50 x M6 screws for bin A3 (Aisle 2)"
    assert alarm_text(Bin("A3", "M6 screws", None, None, None, None, ())) == (
        "Reorder M6 screws for bin A3"
    )
    assert alarm_text(Bin("A3", None, 50, None, None, None, ())) == "Reorder 50 for bin A3"
    assert alarm_text(Bin("A3", None, None, "Aisle 2", None, None, ())) == (
        "Reorder bin A3 (Aisle 2)"
    )


@pytest.mark.parametrize(
    ("severity", "template"), [("CRITICAL", 301), ("MAJOR", 302), ("MINOR", 303), ("WARNING", 304)]
)
def test_severity_picks_the_template(
    setup: tuple[dict[str, Button], Bins], severity: str, template: int
) -> None:
    buttons, bins = setup
    settings = KanbanSettings(alarms=True, severity=severity, safety=0.2, history_days=730)
    signal = signal_for(press(buttons["screws"], 0), bins, settings, ())
    assert signal == Signal(
        "reorder",
        "A3",
        (
            DevicePublish(
                "ac63be123456",
                (
                    f"{template},c8y_KanbanReorder,Reorder 50 x M6 screws for bin A3 (Aisle 2),"
                    "2026-11-26T08:00:01.234+00:00",
                ),
            ),
        ),
    )


def test_raise_repeat_clear_sequence_and_history(
    setup: tuple[dict[str, Button], Bins], tmp_path: Path
) -> None:
    buttons, bins = setup
    with History.open(tmp_path / "history.sqlite3", 730, T0) as history:
        loop = KanbanLoop(bins, ON, history)
        raised = loop.on_press(press(buttons["screws"], 0))
        repeat = loop.on_press(press(buttons["screws"], 5))
        cleared = loop.on_press(press(buttons["screws-full"], 60))
        again = loop.on_press(press(buttons["screws"], 120))
        plain = loop.on_press(press(buttons["plain"], 121))
        assert [s.kind for s in (raised, repeat, cleared, again, plain)] == [
            "reorder", "repeat", "refill", "reorder", "press",
        ]
        alarm = "302,c8y_KanbanReorder,Reorder 50 x M6 screws for bin A3 (Aisle 2),"
        assert raised.lines_for("ac63be123456") == (alarm + "2026-11-26T08:00:01.234+00:00",)
        # The repeat is sent too: Cumulocity de-duplicates it and counts it on the alarm.
        assert repeat.lines_for("ac63be123456") == (alarm + "2026-11-26T08:05:01.234+00:00",)
        # The refill button's own event carries nothing; the clear goes to the reorder button.
        assert cleared.lines_for("ac63be123458") == ()
        assert cleared.lines_elsewhere("ac63be123458") == (
            DevicePublish("ac63be123456", ("306,c8y_KanbanReorder",)),
        )
        assert again.lines_for("ac63be123456") == (alarm + "2026-11-26T10:00:01.234+00:00",)
        assert plain == Signal("press", None, ())
        assert loop.open_bins == {"A3"}
        assert history.counts() == {"reorder": 2, "repeat": 1, "refill": 1, "press": 1}
    # A restarted daemon still knows A3 is open: the next press is a repeat.
    with History.open(tmp_path / "history.sqlite3", 730, T0) as history:
        loop = KanbanLoop(bins, ON, history)
        assert loop.on_press(press(buttons["screws"], 130)).kind == "repeat"


def test_alarms_off_sends_nothing_but_keeps_the_history(
    setup: tuple[dict[str, Button], Bins], tmp_path: Path
) -> None:
    buttons, bins = setup
    off = KanbanSettings(alarms=False, severity="MAJOR", safety=0.2, history_days=730)
    with History.open(tmp_path / "history.sqlite3", 730, T0) as history:
        loop = KanbanLoop(bins, off, history)
        assert loop.on_press(press(buttons["screws"], 0)) == Signal("reorder", "A3", ())
        assert loop.on_press(press(buttons["screws-full"], 1)) == Signal("refill", "A3", ())
        assert history.counts() == {"reorder": 1, "refill": 1}


def test_text_with_a_comma_is_quoted(setup: tuple[dict[str, Button], Bins]) -> None:
    buttons, bins = setup
    signal = signal_for(press(buttons["ties-2"], 0), bins, ON, ())
    assert signal.lines_for("fca6670a0b0d") == (
        '302,c8y_KanbanReorder,"Reorder 100 x Cable ties, 200mm for bin B1 (Aisle 4)",'
        "2026-11-26T08:00:01.234+00:00",
    )
    # ... and decodes back to the same fields.
    assert decode(signal.lines_for("fca6670a0b0d")[0])[0].fields[1] == (
        "Reorder 100 x Cable ties, 200mm for bin B1 (Aisle 4)"
    )


def test_refill_operation_by_template_clears_every_reorder_button(
    setup: tuple[dict[str, Button], Bins],
) -> None:
    _, bins = setup
    [line] = decode("9101,fca6670a0b0c,10042,B1")
    outcome = handle_operation(line, bins, "dashkanban-gw-01")
    assert outcome is not None
    assert outcome.bin == "B1"
    # Status by operation id (504/506), never "the oldest" of the fragment (issue 15).
    assert outcome.publishes == (
        DevicePublish("fca6670a0b0c", ("504,10042",)),
        DevicePublish("fca6670a0b0c", ("306,c8y_KanbanReorder",)),
        DevicePublish("fca6670a0b0d", ("306,c8y_KanbanReorder",)),
        DevicePublish("fca6670a0b0c", ("506,10042",)),
    )


def test_refill_operation_variants(setup: tuple[dict[str, Button], Bins]) -> None:
    _, bins = setup
    # On the gateway, with the bin: status on the gateway's own topic.
    outcome = handle_operation(decode("9101,dashkanban-gw-01,7,a3")[0], bins, "dashkanban-gw-01")
    assert outcome is not None
    assert [(p.topic, p.lines) for p in outcome.publishes] == [
        ("s/us", ("504,7",)),
        ("s/us/ac63be123456", ("306,c8y_KanbanReorder",)),
        ("s/us", ("506,7",)),
    ]
    # On a button, without the bin: the button's bin.
    outcome = handle_operation(decode("9101,ac63be123458,8,")[0], bins, "dashkanban-gw-01")
    assert outcome is not None
    assert outcome.bin == "A3"
    # An unknown bin fails with 505 and the reason.
    outcome = handle_operation(decode("9101,dashkanban-gw-01,9,Z9")[0], bins, "dashkanban-gw-01")
    assert outcome is not None
    assert outcome.bin is None
    assert [(p.topic, p.lines) for p in outcome.publishes] == [
        ("s/us", ("504,9",)),
        ("s/us", ("505,9,\"unknown bin 'Z9' (known: A3, B1)\"",)),
    ]
    # The device shell's c8y_Command, through its response template (with the id).
    outcome = handle_operation(
        decode('9102,dashkanban-gw-01,10,"kanban refilled A3"')[0], bins, "dashkanban-gw-01"
    )
    assert outcome is not None
    assert [(p.topic, p.lines) for p in outcome.publishes] == [
        ("s/us", ("504,10",)),
        ("s/us/ac63be123456", ("306,c8y_KanbanReorder",)),
        ("s/us", ("506,10,bin A3 refilled",)),
    ]
    # A line without an id falls back to the fragment (501/502/503); no fields at all fails
    # cleanly.
    outcome = handle_operation(decode("9101")[0], bins, "dashkanban-gw-01")
    assert outcome is not None
    assert outcome.publishes[-1].lines == (
        "502,c8y_KanbanRefilled,device '' is not a button of any bin; give the bin",
    )
    # Other commands and operations are not ours; the static 511 of a command is left alone
    # (its 9102 carries the id).
    assert handle_operation(decode('511,dashkanban-gw-01,"kanban refilled A3"')[0], bins,
                            "gw") is None
    assert handle_operation(decode("9102,dashkanban-gw-01,11,reboot")[0], bins, "gw") is None
    assert handle_operation(decode("510,dashkanban-gw-01")[0], bins, "gw") is None


def test_template_and_supported_operations(setup: tuple[dict[str, Button], Bins]) -> None:
    _, bins = setup
    assert template_lines() == ("11,9101,,c8y_KanbanRefilled,id,c8y_KanbanRefilled.bin",
                                "11,9102,,c8y_Command,id,c8y_Command.text")
    assert supported_operations(bins) == (
        DevicePublish("ac63be123456", ("114,c8y_KanbanRefilled",)),
        DevicePublish("fca6670a0b0c", ("114,c8y_KanbanRefilled",)),
        DevicePublish("fca6670a0b0d", ("114,c8y_KanbanRefilled",)),
    )


def test_operation_and_cli_refills_close_the_bin(
    setup: tuple[dict[str, Button], Bins], tmp_path: Path
) -> None:
    buttons, bins = setup
    with History.open(tmp_path / "history.sqlite3", 730, T0) as history:
        loop = KanbanLoop(bins, ON, history)
        loop.on_press(press(buttons["ties"], 0))
        loop.on_press(press(buttons["screws"], 0))
        assert history.active_bins() == {"A3", "B1"}
        outcome = loop.on_operation(decode("9101,fca6670a0b0c,5,")[0], "gw", T0 + timedelta(1))
        assert outcome is not None
        assert loop.open_bins == {"A3"}
        name, row, signal = refill_from_cli(bins, "a3", history, T0 + timedelta(days=2))
        assert (name, signal.kind) == ("A3", "refill")
        assert history.active_bins() == frozenset()
        [pending] = history.pending_clears()
        assert (pending.id, pending.bin, pending.source) == (row, "A3", "cli")
        assert pending.publishes == (DevicePublish("ac63be123456", ("306,c8y_KanbanReorder",)),)
        history.mark_sent(row)
        assert history.pending_clears() == []


# ---------------------------------------------------------------------------------------------
# On a real broker: the lines a sequence of presses produces arrive as published, in order.


@pytest.fixture
def listener(mosquitto: Mosquitto) -> Iterator[queue.Queue[tuple[str, str]]]:
    received: queue.Queue[tuple[str, str]] = queue.Queue()
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="c8y-side")
    client.on_message = lambda c, u, m: received.put((m.topic, m.payload.decode()))
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, *a: c.subscribe([("s/us", 1), ("s/us/#", 1)])
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    assert subscribed.wait(5)
    yield received
    client.loop_stop()
    client.disconnect()


def publish(mosquitto: Mosquitto, publishes: Sequence[DevicePublish]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dashkanban-gw-01")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    for p in publishes:
        client.publish(p.topic, join_lines(p.lines), qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def test_sequence_on_the_broker(
    setup: tuple[dict[str, Button], Bins],
    tmp_path: Path,
    mosquitto: Mosquitto,
    listener: queue.Queue[tuple[str, str]],
) -> None:
    buttons, bins = setup
    with History.open(tmp_path / "history.sqlite3", 730, T0) as history:
        loop = KanbanLoop(bins, ON, history)
        publishes: list[DevicePublish] = []
        for p in (press(buttons["screws"], 0), press(buttons["screws"], 2),
                  press(buttons["screws-full"], 30)):
            publishes.extend(loop.on_press(p).publishes)
        outcome = loop.on_operation(decode("9101,fca6670a0b0c,6,B1")[0], "dashkanban-gw-01", T0)
        assert outcome is not None
        publishes.extend(outcome.publishes)
    publish(mosquitto, publishes)
    got = [listener.get(timeout=5) for _ in range(7)]
    alarm = "302,c8y_KanbanReorder,Reorder 50 x M6 screws for bin A3 (Aisle 2),2026-11-26T08:0"
    assert got == [
        ("s/us/ac63be123456", alarm + "0:01.234+00:00"),
        ("s/us/ac63be123456", alarm + "2:01.234+00:00"),
        ("s/us/ac63be123456", "306,c8y_KanbanReorder"),
        ("s/us/fca6670a0b0c", "504,6"),
        ("s/us/fca6670a0b0c", "306,c8y_KanbanReorder"),
        ("s/us/fca6670a0b0d", "306,c8y_KanbanReorder"),
        ("s/us/fca6670a0b0c", "506,6"),
    ]
    assert listener.empty()


def test_an_operation_delivered_twice_clears_its_bin_and_reports_once(
    setup: tuple[dict[str, Button], Bins], tmp_path: Path
) -> None:
    """After a reconnect `500` re-delivers a PENDING operation whose 506 still waits in the
    outbox: the second delivery is not handled again (issue 15)."""
    buttons, bins = setup
    with History.open(tmp_path / "history.sqlite3", 730, T0) as history:
        loop = KanbanLoop(bins, ON, history)
        loop.on_press(press(buttons["ties"], 0))
        line = decode("9101,fca6670a0b0c,10042,B1")[0]
        first = loop.on_operation(line, "gw", T0 + timedelta(1))
        assert first is not None
        loop.answer_queued(first)  # the router does this once the outbox has the answer
        assert loop.on_operation(line, "gw", T0 + timedelta(2)) is None
        # Another operation for the same bin is a refill of its own.
        assert loop.on_operation(decode("9101,fca6670a0b0c,10043,B1")[0], "gw",
                                 T0 + timedelta(3)) is not None
    with sqlite3.connect(tmp_path / "history.sqlite3") as db:
        rows = db.execute("SELECT bin, source, time FROM refills ORDER BY id").fetchall()
    assert rows == [("B1", "operation", (T0 + timedelta(1)).isoformat()),
                    ("B1", "operation", (T0 + timedelta(3)).isoformat())]


def operation_rows(outbox: Outbox) -> list[tuple[str | None, str]]:
    return [line for row in outbox.peek() for line in row.other_lines]


def test_an_operation_handled_before_a_restart_is_answered_once(
    setup: tuple[dict[str, Button], Bins], tmp_path: Path
) -> None:
    """Issue 15's leftover: the ids were kept in memory only, so after a restart a re-delivered
    operation (still PENDING while its answer waited in the outbox) cleared its bin and was
    answered a second time. The history keeps them."""
    buttons, bins = setup
    line = decode("9101,fca6670a0b0c,10042,B1")[0]
    answer = [("fca6670a0b0c", "504,10042"), ("fca6670a0b0c", "306,c8y_KanbanReorder"),
              ("fca6670a0b0d", "306,c8y_KanbanReorder"), ("fca6670a0b0c", "506,10042")]
    with Outbox.open(tmp_path / "outbox.sqlite3") as outbox:
        with History.open(tmp_path / "history.sqlite3", 730, T0) as history:
            loop = KanbanLoop(bins, ON, history)
            loop.on_press(press(buttons["ties"], 0))
            router = OperationRouter(loop, "gw", clock=lambda: T0 + timedelta(1))
            router.queue = outbox.put_lines
            router(line)
            assert operation_rows(outbox) == answer
        # The daemon restarts; `500` delivers the operation again.
        with History.open(tmp_path / "history.sqlite3", 730, T0) as history:
            loop = KanbanLoop(bins, ON, history)
            assert queue_pending_clears(history, outbox.put_lines) == 0
            router = OperationRouter(loop, "gw", clock=lambda: T0 + timedelta(2))
            router.queue = outbox.put_lines
            router(line)
            assert operation_rows(outbox) == answer  # not a second time
            assert _refills(tmp_path) == [("B1", "operation")]


def test_an_answer_the_full_outbox_refused_is_queued_on_redelivery_and_at_start(
    setup: tuple[dict[str, Button], Bins], tmp_path: Path
) -> None:
    """Handled but not queued (a full outbox, max_rows 1): the operation is not refilled twice,
    and its answer is not lost: the next delivery of the operation queues it, or else the next
    start (`queue_pending_clears`)."""
    from tests.outbox_writer import event_for

    buttons, bins = setup
    with (Outbox.open(tmp_path / "outbox.sqlite3", max_rows=1) as outbox,
          History.open(tmp_path / "history.sqlite3", 730, T0) as history):
        loop = KanbanLoop(bins, ON, history)
        loop.on_press(press(buttons["ties"], 0))
        loop.on_press(press(buttons["screws"], 1))
        router = OperationRouter(loop, "gw", clock=lambda: T0 + timedelta(1))
        router.queue = outbox.put_lines
        full = outbox.put(event_for(1))
        first, second = decode("9101,fca6670a0b0c,10042,B1\n9101,ac63be123456,10043,A3")
        for line in (first, second):
            with pytest.raises(OutboxFullError):
                router(line)
        assert [op for op, _, _ in history.pending_answers()] == ["10042", "10043"]
        outbox.ack(full)
        router(first)  # delivered again: its answer is queued now, the bin not refilled again
        assert operation_rows(outbox) == [
            ("fca6670a0b0c", "504,10042"), ("fca6670a0b0c", "306,c8y_KanbanReorder"),
            ("fca6670a0b0d", "306,c8y_KanbanReorder"), ("fca6670a0b0c", "506,10042")]
        router(first)
        assert len(outbox.peek()) == 1
        outbox.ack(outbox.peek()[0].id)
        # The other one is queued by the next start.
        assert queue_pending_clears(history, outbox.put_lines) == 1
        assert operation_rows(outbox) == [
            ("ac63be123456", "504,10043"), ("ac63be123456", "306,c8y_KanbanReorder"),
            ("ac63be123456", "506,10043")]
        assert history.pending_answers() == []
        router(second)
        assert len(outbox.peek()) == 1
    assert _refills(tmp_path) == [
        ("B1", "operation"), ("A3", "operation")]


def test_operation_ids_kept_are_bounded_but_unqueued_answers_are_not_forgotten(
    setup: tuple[dict[str, Button], Bins], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashkanban.kanban import history as history_module

    monkeypatch.setattr(history_module, "OPERATIONS_KEPT", 3)
    _, bins = setup
    with History.open(tmp_path / "history.sqlite3", 730, T0) as history:
        loop = KanbanLoop(bins, ON, history)
        for op_id in range(1, 8):
            outcome = loop.on_operation(decode(f"9101,fca6670a0b0c,{op_id},B1")[0], "gw", T0)
            assert outcome is not None
            if op_id != 2:  # the answer of operation 2 never reached the outbox
                loop.answer_queued(outcome)
    with sqlite3.connect(tmp_path / "history.sqlite3") as db:
        kept = db.execute("SELECT id, pending IS NULL FROM operations ORDER BY seq").fetchall()
    assert kept == [("2", 0), ("5", 1), ("6", 1), ("7", 1)]


def _refills(folder: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(folder / "history.sqlite3")
    try:
        return db.execute("SELECT bin, source FROM refills ORDER BY id").fetchall()
    finally:
        db.close()
