import asyncio
import threading

import pytest

from dashkanban.outbox.writer import Writer


def test_calls_run_in_order_on_one_thread_that_is_not_the_loop() -> None:
    seen: list[tuple[int, str]] = []

    def work(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * 2

    async def main() -> list[int]:
        writer = Writer("w")
        try:
            return list(await asyncio.gather(*(writer.call(work, n) for n in range(5))))
        finally:
            writer.close()

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    assert [n for n, _ in seen] == [0, 1, 2, 3, 4]
    assert len({name for _, name in seen}) == 1
    assert seen[0][1].startswith("w")
    assert seen[0][1] != threading.current_thread().name


def test_an_exception_reaches_the_caller_and_the_writer_goes_on() -> None:
    def boom() -> None:
        raise OSError("disk")

    async def main() -> int:
        writer = Writer()
        try:
            with pytest.raises(OSError, match="disk"):
                await writer.call(boom)
            return await writer.call(int, "7")
        finally:
            writer.close()

    assert asyncio.run(main()) == 7


def test_a_cancelled_caller_does_not_stop_the_write_under_way() -> None:
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def slow() -> None:
        started.set()
        release.wait(5)
        done.append("written")

    async def main() -> None:
        writer = Writer()
        task = asyncio.ensure_future(writer.call(slow))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        writer.close()  # waits for the call under way

    asyncio.run(main())
    assert done == ["written"]
