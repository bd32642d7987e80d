"""ButtonBroker._listen when both of an open connection's tasks fail in the same loop iteration
(the TaskGroup then lists both): a bug wins over a lost connection in either order, and a cancel
from outside still cancels. Driven with a real aiomqtt client on a real mosquitto; only the two
tasks are replaced, so that they fail at a moment the test chooses."""

from __future__ import annotations

import asyncio
import logging
import traceback
from pathlib import Path

import aiomqtt
import pytest

from dashkanban.compose import load_buttons
from dashkanban.config import MqttButtonsSettings
from dashkanban.mqtt_buttons.source import ButtonBroker
from tests.brokers import Mosquitto

WAIT = 10.0
TOPIC = "aisle2/binary_sensor/bin_a3_button/state"


class BugError(Exception):
    pass


class _BothFail(ButtonBroker):
    """The follower fails at once; the message loop one step later, before the group has seen
    the follower's end, so neither is cancelled and both are in the group (follower first).
    With `cancel`, the follower cancels the listening task instead, as a shutdown would."""

    def __init__(self, tmp_path: Path, broker: Mosquitto, follower: BaseException,
                 reader: BaseException, *, cancel: bool = False) -> None:
        macid = tmp_path / "MACID.csv"
        macid.write_text(f"Name, MAC-Address, topic\nesphome, 24:62:ab:00:00:01, {TOPIC}\n")
        settings = MqttButtonsSettings(broker.host, broker.port, False, None, None, None)
        super().__init__(settings, load_buttons(macid), lambda press: None)
        self.follower_error, self.reader_error, self.cancel = follower, reader, cancel
        self.listening: asyncio.Task[object] | None = None
        self.reads = 0

    async def _follow(self, client: aiomqtt.Client, subscribed: set[str]) -> None:
        if self.cancel:
            assert self.listening is not None
            self.listening.cancel()
        raise self.follower_error

    async def _read(self, client: aiomqtt.Client) -> None:
        self.reads += 1
        self.listening = asyncio.current_task()
        await asyncio.sleep(0)
        raise self.reader_error


def listen(broker: _BothFail, mosquitto: Mosquitto) -> BaseException:
    """What `_listen` raised on a real open connection."""

    async def main() -> BaseException:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            try:
                await broker._listen(client, set())
            except BaseException as exc:  # noqa: BLE001 - CancelledError is what some expect
                return exc
        pytest.fail("_listen returned")

    return asyncio.run(main())


def test_a_bug_listed_after_a_lost_connection_is_raised(tmp_path: Path,
                                                        mosquitto: Mosquitto) -> None:
    # Before, the group's first exception was raised: the MqttError, so run() connected again
    # and the bug was never seen.
    broker = _BothFail(tmp_path, mosquitto, aiomqtt.MqttError("connection lost"),
                       BugError("a bug in the message loop"))
    raised = listen(broker, mosquitto)
    assert type(raised) is BugError
    assert str(raised) == "a bug in the message loop"
    # Its own traceback is kept: it still points at where the bug was.
    assert traceback.extract_tb(raised.__traceback__)[-1].name == "_read"


def test_a_bug_listed_before_a_lost_connection_is_raised(tmp_path: Path,
                                                         mosquitto: Mosquitto) -> None:
    broker = _BothFail(tmp_path, mosquitto, BugError("a bug in the follower"),
                       aiomqtt.MqttError("connection lost"))
    raised = listen(broker, mosquitto)
    assert type(raised) is BugError
    assert str(raised) == "a bug in the follower"
    assert traceback.extract_tb(raised.__traceback__)[-1].name == "_follow"


def test_two_lost_connections_raise_the_first(tmp_path: Path, mosquitto: Mosquitto) -> None:
    broker = _BothFail(tmp_path, mosquitto, aiomqtt.MqttError("first"),
                       aiomqtt.MqttError("second"))
    raised = listen(broker, mosquitto)
    assert type(raised) is aiomqtt.MqttError
    assert str(raised) == "first"


def test_two_bugs_raise_the_first_and_log_the_other(tmp_path: Path, mosquitto: Mosquitto,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    broker = _BothFail(tmp_path, mosquitto, BugError("one"), BugError("two"))
    with caplog.at_level(logging.ERROR, logger="dashkanban.mqtt_buttons.source"):
        raised = listen(broker, mosquitto)
    assert type(raised) is BugError
    assert str(raised) == "one"
    further = [r for r in caplog.records if r.name == "dashkanban.mqtt_buttons.source"]
    assert [r.getMessage() for r in further] == [
        "button broker: a further failure at the same moment"]
    assert further[0].exc_info is not None
    assert str(further[0].exc_info[1]) == "two"


def test_a_cancel_at_the_moment_of_a_lost_connection_cancels(tmp_path: Path,
                                                             mosquitto: Mosquitto) -> None:
    # TaskGroup lets the follower's MqttError take priority over the cancel; raised as it
    # was, run() connected again and a shutdown waited for ever.
    broker = _BothFail(tmp_path, mosquitto, aiomqtt.MqttError("connection lost"),
                       BugError("never raised: the message loop is cancelled"), cancel=True)
    raised = listen(broker, mosquitto)
    assert type(raised) is asyncio.CancelledError


def test_run_ends_with_the_bug_instead_of_connecting_again(tmp_path: Path,
                                                           mosquitto: Mosquitto) -> None:
    broker = _BothFail(tmp_path, mosquitto, aiomqtt.MqttError("connection lost"),
                       BugError("a bug in the message loop"))

    async def main() -> None:
        task = asyncio.create_task(broker.run())
        await asyncio.wait({task}, timeout=WAIT)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            pytest.fail(f"run() goes on after {broker.reads} connections")
        with pytest.raises(BugError, match=r"^a bug in the message loop$"):
            task.result()

    asyncio.run(main())
    assert broker.reads == 1
