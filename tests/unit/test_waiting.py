"""A background loop waiting on an event stops when cancelled, whenever the event is set."""

from __future__ import annotations

import asyncio

import pytest

from routing_sidecar.waiting import stop_task, wake_or_timeout


async def loop_until_cancelled(event: asyncio.Event) -> None:
    while True:
        await wake_or_timeout(event, 10.0)
        event.clear()


@pytest.mark.parametrize("turns", range(6))
async def test_a_stop_that_meets_a_wake_up_still_stops_the_loop(turns: int) -> None:
    # The cancel lands `turns` loop turns after the event is set: each point of the wake-up.
    event = asyncio.Event()
    task = asyncio.create_task(loop_until_cancelled(event))
    await asyncio.sleep(0.01)
    event.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    assert task in done and task.cancelled()


async def test_it_says_whether_the_event_or_the_timeout_ended_the_wait() -> None:
    event = asyncio.Event()
    assert await wake_or_timeout(event, 0.01) is False
    event.set()
    assert await wake_or_timeout(event, 10.0) is True
    assert await wake_or_timeout(event, -1.0) is True  # a past deadline still sees a set event


async def swallows_one_cancel(started: asyncio.Event) -> None:
    """A loop like a client library's read that turns one cancellation into a retry."""
    started.set()
    swallowed = False
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed = True
            asyncio.current_task().uncancel()  # type: ignore[union-attr]


async def test_stop_task_ends_a_task_that_lost_the_first_cancel() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(swallows_one_cancel(started))
    await started.wait()
    task.cancel()  # what a plain cancel-and-await relies on: lost here
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done, "the task should still be running after one lost cancel"
    await asyncio.wait_for(stop_task(task), timeout=5)
    assert task.cancelled()


async def test_stop_task_logs_a_task_that_had_failed(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise RuntimeError("broken loop")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await stop_task(task)
    await stop_task(None)
    (record,) = [r for r in caplog.records if r.name == "routing_sidecar.waiting"]
    assert "had stopped on an error" in record.getMessage() and record.exc_info is not None
