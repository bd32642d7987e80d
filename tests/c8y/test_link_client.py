"""The aiomqtt client as c8y/link.py adapts it (no connection: only its callbacks)."""

import asyncio
import logging
from pathlib import Path

import pytest

from dashkanban.backoff import Backoff
from dashkanban.c8y.link import Link, LinkPlan, _Client
from dashkanban.c8y.protocol import Outgoing
from dashkanban.config import Settings, load_settings
from tests.brokers import Mosquitto
from tests.c8y.support import settings_for
from tests.running import RunningUplink


def unreachable(tmp_path: Path) -> Settings:
    """Settings for a link that is never connected here (port 1): for what a link does alone."""
    config = tmp_path / "config.ini"
    config.write_text(
        "[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = dash-gateway\n"
        "password = s3cret\nport = 1\ntls = no\nallow_insecure = yes\n"
        "[gateway]\nserial = dashkanban-gw-01\n"
        f"[outbox]\npath = {tmp_path / 'outbox.sqlite3'}\n")
    config.chmod(0o600)
    return load_settings(config)


def test_a_suback_for_a_subscribe_no_longer_awaited_is_a_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop while a subscribe is in flight cancels its wait; its SUBACK then has no future.
    aiomqtt would log that at ERROR with a traceback (seen in CI as the only ERROR of a run)."""
    caplog.set_level(logging.DEBUG)

    async def main() -> list[int]:
        client = _Client("127.0.0.1", 1)
        waiting: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        client._pending_subscribes[7] = waiting  # type: ignore[assignment]
        client._on_subscribe(None, None, 42, [1])  # abandoned: no future
        client._on_subscribe(None, None, 7, [1])  # awaited: answered as aiomqtt does
        return await waiting

    assert asyncio.run(main()) == [1]
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.DEBUG
            and r.name in ("dashkanban.c8y.link", "mqtt")] == [
        (logging.DEBUG, "SUBACK 42 for a subscribe no longer awaited (the link stopped)")]


def test_a_template_answer_while_the_connection_ends_is_not_a_bug(tmp_path: Path) -> None:
    """`20,<X-ID>` (the collection exists: subscribe to s/dc/<X-ID>) read while the connection's
    task group is already finishing: the subscribe is left to the next connect. It used to
    raise "TaskGroup is shutting down" where a bug is reported, and end `run` with exit 1."""
    settings = unreachable(tmp_path)
    templates = (Outgoing("s/ut/dashKanban", "10,9101,GET,,,c8y_KanbanRefilled"),)
    plan = LinkPlan("dashkanban-gw-01", "100", (), gateway=True, templates=templates)

    async def main() -> list[asyncio.Task[object]]:
        link = Link(settings, plan, None, backoff=Backoff(0, 0), refusal_backoff=Backoff(0, 0))
        client = _Client("127.0.0.1", 1)
        async with asyncio.TaskGroup() as group:
            pass  # finished: as a connection's group whose tasks have ended
        link._on_template_status(client, group, "20,dashKanban,12345")
        me = asyncio.current_task()
        return [t for t in asyncio.all_tasks() if t is not me]

    assert asyncio.run(main()) == []



def test_a_bug_that_ended_run_leaves_no_wake_up_behind(tmp_path: Path) -> None:
    """A bug reported with no connection's group (`_crash`) ends `run`, and goes with it: the
    wake-up that cut the backoff wait short for it used to stay set, so every backoff wait of a
    later `run` of the same link would have returned at once."""
    settings = unreachable(tmp_path)
    plan = LinkPlan("dashkanban-gw-01", "100", (), gateway=True)

    async def main() -> tuple[str, bool, bool]:
        link = Link(settings, plan, None, backoff=Backoff(0, 0),
                    refusal_backoff=Backoff(0, 0))
        link._crash(KeyError("injected"))
        raised = ""
        try:
            await link.run()  # port 1: refused, then the bug is raised
        except KeyError as exc:
            raised = repr(exc)
        return raised, link._bug is None, link._bugged.is_set()

    assert asyncio.run(main()) == ("KeyError('injected')", True, False)


def test_a_bug_reported_while_connecting_ends_run_at_the_connect(
    tmp_path: Path, mosquitto_tls: Mosquitto, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug reported while no connection's group exists (the link is connecting) ends `run`
    as soon as the connection is up; it used to wait until that connection ended."""
    original = Link._connect_and_serve

    async def connect(self: Link) -> object:
        if not self._client:  # the first connect: no connection's group to fail yet
            self._crash(TypeError("injected: a bug while connecting"))
        return await original(self)

    monkeypatch.setattr(Link, "_connect_and_serve", connect)
    uplink = RunningUplink(settings_for(tmp_path, mosquitto_tls), backoff=Backoff(0.05, 0.2))
    uplink.start()
    try:
        assert repr(uplink.failure(10)) == "TypeError('injected: a bug while connecting')"
    finally:
        uplink.stop()
    assert "New client connected" in mosquitto_tls.log_text()  # it was up when it ended
