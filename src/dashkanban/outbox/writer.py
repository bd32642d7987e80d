"""The outbox's one writer: blocking, fsynced work handed off the event loop to one thread.

`run` is one asyncio loop (docs/architecture.md). An SQLite commit with `synchronous=FULL` waits
for the disk (milliseconds, seconds on a dying SD card), which the loop must never do; and the
outbox wants exactly one writer, so every put, ack and prune goes through this single thread in
the order it was asked for. Reads may use it too: then they see every earlier write.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Writer:
    """Runs blocking calls on one thread, in order. Nothing starts before the first `call`."""

    def __init__(self, name: str = "outbox-writer") -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None

    async def call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`fn(*args, **kwargs)` on the writer thread. A cancelled caller does not cancel the
        call: a commit under way finishes (a row is either written or not, never half)."""
        if self._executor is None:
            # The one thread of `run` that is not the loop: blocking disk writes (module doc).
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for the calls under way, then end the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
