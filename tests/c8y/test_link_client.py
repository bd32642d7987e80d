"""The aiomqtt client as c8y/link.py adapts it (no connection: only its callbacks)."""

import asyncio
import logging

import pytest

from dashkanban.c8y.link import _Client


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
