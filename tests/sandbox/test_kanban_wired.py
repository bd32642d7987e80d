"""The Kanban loop wired into the product, end to end against the sandbox, checked over its REST
API: `replay` of a capture with bins raises and clears the reorder alarms, `kanban refilled`
clears another bin's, and the daemon answers a `c8y_KanbanRefilled` operation created over REST.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dashkanban.capture import Frame
from dashkanban.cli import main
from dashkanban.commands.run import Daemon
from dashkanban.config import load_settings
from dashkanban.kanban.alarms import clear_lines
from dashkanban.kanban.cli import local_report
from dashkanban.kanban.history import History
from dashkanban.kanban.wiring import load_kanban_bins
from dashkanban.outbox.store import Outbox
from dashkanban.sandbox import Sandbox
from tests import forge
from tests.sandbox_fixture import rest, sandbox_config

MACID = (
    "Name, MAC-Address, bin, part, quantity, location, supplier, lead_time_days, role\n"
    "screws, ac:63:be:12:34:56, A3, M6 screws, 50, Aisle 2, Würth, 2,\n"
    "screws-full, ac:63:be:12:34:58, A3, , , , , , refill\n"
    'ties, fc:a6:67:0a:0b:0c, B1, "Cable ties, 200mm", 100, Aisle 4, , 3,\n'
)
SCREWS, SCREWS_FULL, TIES = "ac63be123456", "ac63be123458", "fca6670a0b0c"
GATEWAY = "dashkanban-gw-01"
T0 = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC).timestamp()
SCREWS_TEXT = "Reorder 50 x M6 screws for bin A3 (Aisle 2)"
TIES_TEXT = "Reorder 100 x Cable ties, 200mm for bin B1 (Aisle 4)"
WAIT = 10.0


def write_config(folder: Path, sandbox: Sandbox) -> Path:
    (folder / "MACID.csv").write_text(MACID, encoding="utf-8")
    # 100 years: the capture's fixed 2026 times must never be pruned by a later clock.
    kanban = "[kanban]\nalarms = yes\nseverity = MINOR\nhistory_days = 36500\n"
    return sandbox_config(folder, sandbox, folder / "MACID.csv", gateway=GATEWAY, extra=kanban)


def press(mac: str, at: float) -> tuple[float, bytes]:
    return at, forge.dhcp_client_frame(mac, forge.DISCOVER)


def get(sandbox: Sandbox, url: str, **params: Any) -> Any:
    with rest(sandbox) as client:
        answer = client.get(url, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def alarms_of(sandbox: Sandbox, serial: str) -> list[tuple[str, str, str, str, int]]:
    """(type, status, severity, text, count) of a device's alarms, over REST."""
    source = sandbox.device_id(serial)
    assert source is not None, f"no device {serial}"
    found = get(sandbox, "/alarm/alarms", source=source, pageSize=100)["alarms"]
    return [(a["type"], a["status"], a["severity"], a["text"], a["count"]) for a in found]


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_replay_with_bins_raises_dedups_and_clears_then_kanban_refilled_clears_b1(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sandbox)
    capture = tmp_path / "store.pcap"
    with capture.open("wb") as out:
        forge.write_pcap(out, [
            press("ac:63:be:12:34:56", T0),  # A3 reorder
            press("ac:63:be:12:34:56", T0 + 60),  # A3 again while open: a repeat
            press("fc:a6:67:0a:0b:0c", T0 + 120),  # B1 reorder
            press("ac:63:be:12:34:58", T0 + 180),  # A3's refill button
        ])
    assert main(["replay", "-c", str(config), str(capture), "--timeout", "10"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == "delivered 4 events to 127.0.0.1"

    events = get(sandbox, "/event/events", pageSize=100)["events"]
    assert sorted(((e["type"], e["text"], e["time"]) for e in events), key=lambda e: e[2]) == [
        ("c8y_MAC_Event", f"{name} pressed ({mac})", f"2026-11-26T08:0{minute}:01.234Z")
        for name, mac, minute in [
            ("screws", "ac:63:be:12:34:56", 0),
            ("screws", "ac:63:be:12:34:56", 1),
            ("ties", "fc:a6:67:0a:0b:0c", 2),
            ("screws-full", "ac:63:be:12:34:58", 3),
        ]
    ]
    # One alarm for the two A3 presses (Cumulocity counted the repeat), cleared by the refill.
    assert alarms_of(sandbox, SCREWS) == [
        ("c8y_KanbanReorder", "CLEARED", "MINOR", SCREWS_TEXT, 2)
    ]
    assert alarms_of(sandbox, TIES) == [("c8y_KanbanReorder", "ACTIVE", "MINOR", TIES_TEXT, 1)]
    assert alarms_of(sandbox, SCREWS_FULL) == []
    history = tmp_path / "state" / "history.sqlite3"
    with History.open(history, 730, datetime.fromtimestamp(T0, UTC)) as h:
        assert h.counts() == {"reorder": 2, "repeat": 1, "refill": 1}
        assert h.active_bins() == frozenset({"B1"})

    assert main(["kanban", "refilled", "-c", str(config), "b1", "--timeout", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        f"  clear: s/us/{TIES} 306,c8y_KanbanReorder",
        f"1 refill(s) queued in {tmp_path / 'state' / 'outbox.sqlite3'}",
        "delivered to 127.0.0.1",
    ]
    assert alarms_of(sandbox, TIES) == [("c8y_KanbanReorder", "CLEARED", "MINOR", TIES_TEXT, 1)]
    with History.open(history, 730, datetime.fromtimestamp(T0, UTC)) as h:
        assert h.active_bins() == frozenset()
        assert h.pending_clears() == []
    with Outbox.open(tmp_path / "state" / "outbox.sqlite3") as outbox:
        assert outbox.count() == 0

    # The report from that history, by hand. The data covers the first press (T0) to the last
    # record, B1's refill by `kanban refilled` just now (issue 14 item 8: not to the report's
    # `now`), T days:
    # A3: 1 reorder (the repeat is not demand) x 50 / T a day;
    #     cards = ceil(D x 2 (lead time) x 1.2 / 50).
    # B1: 1 x 100 / T a day; cards = ceil(D x 3 x 1.2 / 100).
    settings = load_settings(config)
    with History.open(history, 36500) as h:
        last = h.last_record()
    assert last is not None
    days = (last.timestamp() - T0) / 86400
    now = datetime.fromtimestamp(T0 + 2 * 86400, UTC)
    report = local_report(settings, load_kanban_bins(settings), None, now)
    assert (report.start, report.end) == (datetime.fromtimestamp(T0, UTC), last)
    a3, b1 = 50 / days, 100 / days
    assert [(b.name, b.reorders, b.repeats, b.demand_per_day, b.recommended_cards)
            for b in report.bins] == [
        ("A3", 1, 1, pytest.approx(a3), math.ceil(a3 * 2 * 1.2 / 50)),
        ("B1", 1, 0, pytest.approx(b1), math.ceil(b1 * 3 * 1.2 / 100)),
    ]
    # A3 was refilled 3 minutes after its reorder: one replenishment, fewer than min_samples.
    assert [(b.name, b.lead.samples, b.lead.used) for b in report.bins] == [
        ("A3", 1, "configured"), ("B1", 1, "configured")]

    # The gateway sent exactly these Kanban lines, in press order, on the children's topics.
    kanban = [
        (m.topic, m.payload) for m in sandbox.messages()
        if m.direction == "in" and m.client_id == GATEWAY and "c8y_Kanban" in m.payload
    ]
    assert kanban == [
        (f"s/us/{SCREWS}", f"400,c8y_MAC_Event,screws pressed (ac:63:be:12:34:56),"
                           f"2026-11-26T08:00:01.234+00:00\n303,c8y_KanbanReorder,"
                           f"{SCREWS_TEXT},2026-11-26T08:00:01.234+00:00"),
        (f"s/us/{SCREWS}", f"400,c8y_MAC_Event,screws pressed (ac:63:be:12:34:56),"
                           f"2026-11-26T08:01:01.234+00:00\n303,c8y_KanbanReorder,"
                           f"{SCREWS_TEXT},2026-11-26T08:01:01.234+00:00"),
        (f"s/us/{TIES}", f"400,c8y_MAC_Event,ties pressed (fc:a6:67:0a:0b:0c),"
                         f"2026-11-26T08:02:01.234+00:00\n303,c8y_KanbanReorder,"
                         f'"{TIES_TEXT}",2026-11-26T08:02:01.234+00:00'),
        (f"s/us/{SCREWS}", "306,c8y_KanbanReorder"),
        (f"s/us/{TIES}", "306,c8y_KanbanReorder"),
    ]


class OpenSource:
    """A frame source that stays open until stopped, fed by the test."""

    def __init__(self) -> None:
        self._frames: queue.Queue[Frame | None] = queue.Queue()

    def put(self, data: bytes) -> None:
        self._frames.put(Frame(time.time(), data))

    def frames(self) -> Iterator[Frame]:
        while (frame := self._frames.get()) is not None:
            yield frame

    def stop(self) -> None:
        self._frames.put(None)


def test_daemon_answers_a_refill_operation_created_over_rest(
    tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dashkanban")
    settings = load_settings(write_config(tmp_path, sandbox))
    # A refill left pending clear (an older `kanban refilled`, or one killed before queueing):
    # the daemon queues it at start, behind nothing, and marks it sent.
    bins = load_kanban_bins(settings)
    ties_bin = bins.find("B1")
    assert ties_bin is not None
    with History.open(tmp_path / "state" / "history.sqlite3", 730) as h:
        h.record_refill("B1", datetime.now(UTC), "cli", clear_lines(ties_bin))
    source = OpenSource()
    daemon = Daemon(settings, source, drain_on_stop=5.0)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        # At connect: the children of every bin button exist and the reorder buttons offer the
        # operation; the fragment with the bin's data is written over REST.
        def offered() -> bool:
            doc = sandbox.device(SCREWS)
            return doc is not None and doc.get("c8y_SupportedOperations") == [
                "c8y_KanbanRefilled"
            ]

        wait_until(offered, "114 on the reorder button")
        wait_until(lambda: any(m.topic == f"s/us/{TIES}" and m.payload == "306,c8y_KanbanReorder"
                               for m in sandbox.messages()), "the pending clear")
        assert (sandbox.device(TIES) or {})["c8y_SupportedOperations"] == ["c8y_KanbanRefilled"]
        assert "c8y_SupportedOperations" not in (sandbox.device(SCREWS_FULL) or {"x": 1})
        wait_until(lambda: "c8y_Kanban" in (sandbox.device(SCREWS_FULL) or {}), "fragments")
        assert (sandbox.device(SCREWS) or {})["c8y_Kanban"] == {
            "bin": "A3", "role": "reorder", "part": "M6 screws", "quantity": 50,
            "location": "Aisle 2", "supplier": "Würth", "leadTimeDays": 2, "gateway": GATEWAY,
        }

        source.put(forge.dhcp_client_frame("ac:63:be:12:34:56", forge.DISCOVER))
        wait_until(lambda: alarms_of(sandbox, SCREWS) != [], "the reorder alarm")
        assert alarms_of(sandbox, SCREWS) == [
            ("c8y_KanbanReorder", "ACTIVE", "MINOR", SCREWS_TEXT, 1)
        ]

        child = sandbox.device_id(SCREWS) or ""
        with rest(sandbox) as client:
            created = client.post(
                "/devicecontrol/operations", headers={"Accept": "application/json"},
                json={"deviceId": child, "description": "Bin A3 refilled",
                      "c8y_KanbanRefilled": {"bin": "A3"}},
            )
        assert created.status_code == 201
        op_id = created.json()["id"]

        def done() -> bool:
            op = get(sandbox, f"/devicecontrol/operations/{op_id}")
            return bool(op["status"] == "SUCCESSFUL")

        wait_until(done, "the operation to succeed")
        assert alarms_of(sandbox, SCREWS) == [
            ("c8y_KanbanReorder", "CLEARED", "MINOR", SCREWS_TEXT, 1)
        ]
        # EXECUTING, the clear, then SUCCESSFUL, by the operation's id (504/506): one row of
        # lines, one message on the child.
        answers = [
            m.payload for m in sandbox.messages()
            if m.direction == "in" and m.topic == f"s/us/{SCREWS}" and m.payload.startswith("50")
        ]
        assert answers == [f"504,{op_id}\n306,c8y_KanbanReorder\n506,{op_id}"]

        # A reconnect asks whether the collection exists (empty s/ut) and creates nothing: a
        # collection cannot be changed once created (docs/protocol.md 2.6; issue 15).
        assert sandbox.drop_connection(GATEWAY)
        wait_until(lambda: sum(m.startswith("Cumulocity: template collection dashkanban-v2 "
                                            "exists") for m in caplog.messages) == 2,
                   "the 20 after reconnecting")
        wait_until(lambda: len([r for r in sandbox.subscriptions()
                                if r.client_id == GATEWAY]) == 4, "the s/dc subscription again")
        creations = [m for m in sandbox.messages()
                     if m.topic == "s/ut/dashkanban-v2" and m.direction == "in"]
        # First connect: asked, created, asked again; the reconnect: asked once.
        assert [m.payload for m in creations] == [
            "", "11,9101,,c8y_KanbanRefilled,id,c8y_KanbanRefilled.bin\n"
                "11,9102,,c8y_Command,id,c8y_Command.text", "", ""]
        # s/dc/dashkanban-v2 is subscribed only once the collection exists (`20` on s/dt).
        gateway_subscriptions = [r.topics for r in sandbox.subscriptions()
                                 if r.client_id == GATEWAY]
        assert gateway_subscriptions == [("s/ds", "s/e", "s/dt"), ("s/dc/dashkanban-v2",)] * 2
    finally:
        daemon.stop()
        runner.join(timeout=20)
    assert not runner.is_alive()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    with History.open(tmp_path / "state" / "history.sqlite3", 730) as h:
        assert h.counts() == {"reorder": 1}
        assert h.active_bins() == frozenset()
        assert h.pending_clears() == []


def test_an_operation_answered_before_a_restart_is_answered_once_after_it(
    tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15's leftover, end to end: a daemon handled a refill operation and queued its
    answer, then died before sending it. While it is PENDING, Cumulocity sends the operation
    again after the restart; the history knows its id, so the answer queued before goes out
    once and the bin is not refilled a second time (the ids used to be kept in memory)."""
    from dashkanban.c8y.smartrest import decode
    from dashkanban.kanban.wiring import OperationRouter, open_loop

    caplog.set_level(logging.INFO, logger="dashkanban")
    settings = load_settings(write_config(tmp_path, sandbox))
    source = OpenSource()
    daemon = Daemon(settings, source, drain_on_stop=5.0)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:  # a first run creates the button devices and the template collection
        wait_until(lambda: "c8y_SupportedOperations" in (sandbox.device(SCREWS) or {}), "114")
    finally:
        daemon.stop()
        runner.join(timeout=20)
    assert not runner.is_alive()
    op = sandbox.create_operation(sandbox.device_id(SCREWS) or "",
                                  {"c8y_KanbanRefilled": {"bin": "A3"}})
    op_id = op["id"]
    # The daemon that died: it got the operation, cleared the bin and queued the answer.
    loop = open_loop(settings)
    assert loop is not None
    assert loop.history is not None
    with Outbox.open(settings.outbox.path) as outbox:
        router = OperationRouter(loop, GATEWAY)
        router.queue = outbox.put_lines
        router(decode(f"9101,{SCREWS},{op_id},A3")[0])
    loop.history.close()

    # The first daemon may have stopped before its s/dc subscription (it subscribes once the
    # template collection exists), so count from here rather than expect one from it.
    def dc_subscriptions() -> int:
        return [r.topics for r in sandbox.subscriptions()].count(("s/dc/dashkanban-v2",))

    # Its SUBSCRIBE may still be on its way when the thread has ended: the sandbox reads a
    # connection's packets in order, so once it has ended the session it has recorded them all.
    wait_until(lambda: not sandbox.call(lambda: GATEWAY in sandbox.broker.sessions),
               "the sandbox to end the first daemon's session")
    before = dc_subscriptions()
    # A source of its own: the first daemon's stop() ended its source, and a daemon whose source
    # has ended drains and stops by itself.
    daemon = Daemon(settings, OpenSource(), drain_on_stop=5.0)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: dc_subscriptions() == before + 1,
                   "the restarted daemon's s/dc subscription")
        # The operation again, as Cumulocity sends a PENDING one after a reconnect (`500`).
        # Here the queued answer may already have made it SUCCESSFUL, so it is pushed by hand,
        # as it reaches the gateway when the `500` comes first.
        sandbox.call(sandbox.broker.operation_created, op)
        wait_until(lambda: f"operation {op_id} delivered again: already handled"
                   in caplog.messages, "the operation delivered again")
        wait_until(lambda: get(sandbox, f"/devicecontrol/operations/{op_id}")["status"]
                   == "SUCCESSFUL", "the operation to succeed")
        wait_until(lambda: daemon.courier is not None and daemon.courier.in_flight == 0,
                   "nothing in flight")
    finally:
        daemon.stop()
        runner.join(timeout=20)
    assert not runner.is_alive()
    answers = [m.payload for m in sandbox.messages()
               if m.direction == "in" and m.topic == f"s/us/{SCREWS}"
               and m.payload.startswith("50")]
    assert answers == [f"504,{op_id}\n306,c8y_KanbanReorder\n506,{op_id}"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    with History.open(tmp_path / "state" / "history.sqlite3", 730) as h:
        assert [b for b, _ in h.refill_times()] == ["A3"]
