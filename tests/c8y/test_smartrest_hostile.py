"""Issue 13, hole 1: nothing in a name or text can change the number of SmartREST fields.

Proved against the sandbox's parser, which reads `\\"` and `""` inside quotes as Cumulocity's docs
describe both (docs/cumulocity.md).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashkanban.c8y.smartrest import (
    BACKSLASH_STAND_IN,
    decode,
    encode_line,
    sendable,
    unsendable_reason,
)
from dashkanban.cli import main
from dashkanban.detect.buttons import Button
from dashkanban.sandbox import Sandbox
from dashkanban.sandbox.smartrest import SmartRestProcessor
from dashkanban.sandbox.store import Store
from tests import forge
from tests.c8y import test_rest
from tests.c8y.test_rest import MANAGED, Clock, http_server, make_source, tenant
from tests.sandbox_fixture import rest, sandbox, sandbox_config

__all__ = ["http_server", "sandbox", "tenant"]  # fixtures shared with other tests

T = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC).isoformat(timespec="milliseconds")

HOSTILE = [
    'Shelf \\",c8y_Evil',  # was: type 'c8y_Evil"', marker c8y_DashButton
    'Shelf A3 \\",c8y_Evil,"x\\',  # was: 45,101,Wrong number of arguments
    "ends with a backslash\\",  # was: the closing quote escaped, the line swallowed
    'a\\\\"b, c',
    "two\\\\\\\\backslashes,",
    'tab\t\\"\nnewline \\',
]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_keeps_the_fields_of_101_and_400(name: str) -> None:
    store = Store()
    processor = SmartRestProcessor(store, "dash-gateway")
    assert processor.handle("gw-01", "s/us", b"100,gw,c8y_DashKanbanGateway") == []
    child = encode_line(101, "ac63be123456", name, "c8y_DashButton")
    event = encode_line(400, "c8y_MAC_Event", f"{name} pressed (ac:63:be:12:34:56)", T)
    assert processor.handle("gw-01", "s/us", child.encode()) == []
    assert processor.handle("gw-01", "s/us/ac63be123456", event.encode()) == []
    mo_id = store.find_external("c8y_Serial", "ac63be123456")
    doc = store.get_managed_object(mo_id or "")
    assert (doc["name"], doc["type"]) == (sendable(name), "c8y_DashButton")
    assert [(e["source"], e["type"], e["text"], e["time"]) for e in store.events] == [
        (mo_id, "c8y_MAC_Event", sendable(f"{name} pressed (ac:63:be:12:34:56)"),
         "2026-11-26T08:00:01.234Z")
    ]


def test_the_first_hostile_name_was_an_injection_before() -> None:
    """The old encoding (RFC 4180 only) read back by the same parser: four fields, type changed."""
    name = HOSTILE[0]
    old = '101,ac63be123456,"' + name.replace('"', '""') + '",c8y_DashButton'
    assert decode(old)[0].fields == ("ac63be123456", 'Shelf "', 'c8y_Evil"', "c8y_DashButton")
    new = encode_line(101, "ac63be123456", name, "c8y_DashButton")
    assert new == '101,ac63be123456,"Shelf ＼"",c8y_Evil",c8y_DashButton'
    assert decode(new)[0].fields == ("ac63be123456", 'Shelf ＼",c8y_Evil', "c8y_DashButton")


def test_a_backslash_before_an_ordinary_character_is_sent_as_itself() -> None:
    assert sendable("C:\\bins\\A3") == "C:\\bins\\A3"
    assert encode_line(400, "t", "C:\\bins\\A3, left") == '400,t,"C:\\bins\\A3, left"'
    assert sendable('a\\"b\\\\c\\') == f'a{BACKSLASH_STAND_IN}"b{BACKSLASH_STAND_IN}\\c' + (
        BACKSLASH_STAND_IN
    )
    assert sendable("bell\x07") == "bell"


def test_unsendable_reason() -> None:
    assert unsendable_reason("C:\\bins\\A3, left \"x\"") is None
    assert unsendable_reason('Shelf \\"') == (
        "it holds a '\\' before '\"', '\\', ',', a line break or at its end, which "
        "Cumulocity's SmartREST parser could read as an escape"
    )
    assert unsendable_reason("bell\x07") == "it holds the control character U+0007"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from('\\",\r\n\t ab\x00\x1f＼'), max_size=12),
                min_size=1, max_size=4))
def test_any_fields_decode_back_to_the_same_number_of_fields(fields: list[str]) -> None:
    (line,) = decode(encode_line(400, *fields))
    assert line.template == "400"
    assert line.fields == tuple(sendable(f) for f in fields)


def test_an_inventory_name_is_sanitised_with_one_warning(
    tmp_path: Path, http_server: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hostile = 'Aisle 2 \\",c8y_Evil\x07' + "x" * 2000
    monkeypatch.setitem(MANAGED, "name", hostile)
    source = make_source(test_rest.settings(tmp_path, http_server), Clock())
    try:
        with caplog.at_level(logging.WARNING, logger="dashkanban.c8y.rest"):
            button = source("ac:63:be:12:34:56")
            assert source("ac:63:be:12:34:56") == button  # cached: no second warning
    finally:
        source.close()
    expected = 'Aisle 2 ＼",c8y_Evil' + "x" * (1000 - 19)
    assert button == Button(name=expected, mac="ac:63:be:12:34:56")
    assert [r.getMessage() for r in caplog.records] == [
        f"ac:63:be:12:34:56: its name in Cumulocity's inventory, {hostile[:100]!r}, cannot be "
        f"sent back as written; using {expected[:100]!r}"
    ]


def test_replay_through_the_sandbox_keeps_every_field(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end over MQTT: a name with quotes, commas and safe backslashes arrives exactly; a
    `\\"` in the event text cannot shift the 400's fields (the time stays the press time)."""
    name = 'C:\\bins\\A3, "left"'
    buttons = tmp_path / "MACID.csv"
    buttons.write_text('Name, MAC-Address\n"C:\\bins\\A3, ""left""", ac:63:be:12:34:56\n')
    text = '{name} pressed \\",2030-01-01T00:00:00.000Z'
    config = sandbox_config(tmp_path, sandbox, buttons, gateway="dashkanban-gw-13",
                            extra=f"[event]\ntext = {text}\n")
    capture = tmp_path / "press.pcap"
    pressed = datetime(2026, 11, 26, 8, 0, 1, 234000, tzinfo=UTC)
    with capture.open("wb") as out:
        forge.write_pcap(out, [(pressed.timestamp(),
                                forge.dhcp_client_frame("ac:63:be:12:34:56", forge.DISCOVER))])
    assert main(["replay", "-c", str(config), str(capture), "--timeout", "10"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == "delivered 1 event to 127.0.0.1"
    with rest(sandbox) as client:
        device = client.get(f"/inventory/managedObjects/{sandbox.device_id('ac63be123456')}")
        events = client.get("/event/events", params={"pageSize": 10}).json()["events"]
    assert (device.json()["name"], device.json()["type"]) == (name, "c8y_DashButton")
    assert [(e["type"], e["text"], e["time"]) for e in events] == [
        ("c8y_MAC_Event", f'{name} pressed ＼",2030-01-01T00:00:00.000Z',
         "2026-11-26T08:00:01.234Z")
    ]
