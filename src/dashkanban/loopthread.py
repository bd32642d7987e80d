"""A coroutine on an event loop of its own, in a thread: the interim bridge from today's threaded
`run` to the parts that are coroutines now (issue 11).

`Lookups.run()` (inventory.py) and `MetricsReporting.run()` (metrics.py) are the implementations;
their `start()`/`stop()` only run them here, because daemon.py still calls those. When `run` is one
asyncio loop (daemon.py on a TaskGroup), the daemon awaits the coroutines in its group, and this
module and those `start`/`stop` methods go.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

START_WAIT = 10.0  # seconds `start` waits for `setup`


class LoopThread:
    """`asyncio.run(main())` on a daemon thread named `name`; `setup()` first, whose error
    `start()` raises in the caller (a busy port is a configuration error, exit 2). `main`'s
    unexpected failure goes to `on_failure` (the daemon then exits 1), else it is logged."""

    def __init__(self, name: str, main: Callable[[], Awaitable[None]], *,
                 setup: Callable[[], Awaitable[None]] | None = None,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.name = name
        self._main = main
        self._setup = setup
        self.on_failure = on_failure
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        # The one thread of this module: a loop for a coroutine while the daemon has none.
        self._thread = threading.Thread(target=asyncio.run, args=(self._body(started),),
                                        name=self.name, daemon=True)
        self._thread.start()
        try:
            started.result(START_WAIT)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel `main` and wait for it to end (its `finally` blocks run on its loop)."""
        loop, task, thread = self._loop, self._task, self._thread
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                loop.call_soon_threadsafe(task.cancel)
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    async def _body(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            if self._setup is not None:
                await self._setup()
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - start() raises it
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            await self._main()
        except asyncio.CancelledError:
            pass  # stop()
        except Exception as exc:
            if self.on_failure is None:
                log.exception("%s failed unexpectedly", self.name)
            else:
                self.on_failure(exc)
