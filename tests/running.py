"""The asynchronous uplink and Courier driven from a test's own (synchronous) thread.

`Uplink.run()` and `Courier.run()` live on an event loop; the tests of their behaviour were
written against blocking calls and callbacks, and read best that way. `LoopThread` runs one loop
on a thread of its own; `RunningUplink` and `RunningCourier` start the real objects on it and
offer the old blocking calls (`start`, `send` with callbacks, `wait_connected`, `drain`, `stop`),
each of which only hands the real call to the loop and waits for its answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, TypeVar

from dashkanban.c8y.mqtt import DeviceLine, Uplink
from dashkanban.config import Settings
from dashkanban.detect.events import Event
from dashkanban.outbox.courier import Courier, OutboxLike
from dashkanban.outbox.writer import Writer

T = TypeVar("T")


class LoopThread:
    """An event loop on a daemon thread; `call` runs a function on it, `wait` a coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="test-loop")
        self._thread.start()

    def wait(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: object) -> T:
        async def on_loop() -> T:
            return fn(*args)

        return self.wait(on_loop())

    def task(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        async def start() -> asyncio.Task[None]:
            return asyncio.get_running_loop().create_task(coroutine)

        return self.wait(start())

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


async def _finish(task: asyncio.Task[None], timeout: float) -> None:
    task.cancel()
    await asyncio.wait({task}, timeout=timeout)


class RunningUplink:
    """An `Uplink` running on a `LoopThread`, with blocking calls for a test."""

    def __init__(self, settings: Settings, *, loop: LoopThread | None = None,
                 **options: Any) -> None:
        self.uplink = Uplink(settings, **options)
        self.thread = loop or LoopThread()
        self._task: asyncio.Task[None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.uplink, name)

    def start(self) -> None:
        self._task = self.thread.task(self.uplink.run())
        self.thread.wait(_until(lambda: self.uplink.running or self._task is None
                                or self._task.done()))
        if self._task.done() and self._task.exception() is not None:
            raise self._task.exception()  # type: ignore[misc]

    def stop(self, timeout: float = 5.0) -> None:
        if self._task is not None and self.thread.alive:
            self.thread.wait(_finish(self._task, timeout))
            self._task = None
        self.thread.close()

    @property
    def connected(self) -> bool:
        return self.uplink.connected

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def wait_connected(self, timeout: float, event: Event | None = None) -> bool:
        return self.thread.wait(self.uplink.wait_connected(timeout, event))

    def failure(self, timeout: float) -> BaseException | None:
        """How `Uplink.run` ended (waiting up to `timeout`): its exception, out of the task
        groups that wrap it one inside the other (each with that one exception only)."""
        task = self._task
        assert task is not None
        self.thread.wait(asyncio.wait({task}, timeout=timeout))
        assert task.done(), "the uplink lived on"
        failure = task.exception()
        while isinstance(failure, BaseExceptionGroup):
            assert len(failure.exceptions) == 1
            failure = failure.exceptions[0]
        return failure

    def send(self, event: Event, extra_lines: Sequence[str] = (), *,
             on_delivered: Callable[[], None] | None = None,
             on_lost: Callable[[], None] | None = None,
             other_lines: Sequence[DeviceLine] = (), row: int | None = None) -> bool:
        def start() -> bool:
            sent = self.uplink.send(event, extra_lines, other_lines=other_lines, row=row)
            if sent is None:
                return False
            sent.add_done_callback(lambda f: _report(f, on_delivered, on_lost))
            return True

        return self.thread.call(start)


def _report(future: asyncio.Future[None], on_delivered: Callable[[], None] | None,
            on_lost: Callable[[], None] | None) -> None:
    callback = on_lost if future.exception() is not None else on_delivered
    if callback is not None:
        callback()


async def _until(condition: Callable[[], bool], step: float = 0.01) -> None:
    while not condition():
        await asyncio.sleep(step)


class RunningCourier:
    """A `Courier` on the loop of `uplink`, with its own writer thread, and blocking calls."""

    def __init__(self, outbox: OutboxLike, uplink: RunningUplink, **options: Any) -> None:
        self.thread = uplink.thread
        self.writer = Writer()
        self.courier = Courier(outbox, uplink.uplink, writer=self.writer, **options)
        self._task: asyncio.Task[None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.courier, name)

    def start(self) -> None:
        task = self._task = self.thread.task(self.courier.run())
        # Or done: a Courier that fails at once (a test's injected bug) may never be seen running.
        self.thread.wait(_until(lambda: self.courier.running or task.done()))

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def stop(self, timeout: float = 5.0) -> None:
        if self._task is not None and self.thread.alive:
            self.thread.wait(_finish(self._task, timeout))
            self._task = None
        self.writer.close()

    def drain(self, timeout: float) -> bool:
        return self.thread.wait(self.courier.drain(timeout))

    def wake(self) -> None:
        self.thread.call(self.courier.wake)

    def put(self, event: Event, extra_lines: Sequence[str] = (),
            other_lines: Sequence[DeviceLine] = ()) -> int:
        return self.thread.wait(self.courier.put(event, extra_lines, other_lines))

    def put_lines(self, lines: Sequence[DeviceLine], time: datetime) -> int:
        return self.thread.wait(self.courier.put_lines(lines, time))


def run_soon(loop: LoopThread, awaitable: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await awaitable

    return loop.wait(wrapped())
