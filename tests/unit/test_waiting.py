"""A background loop waiting on an event stops when cancelled, whenever the event is set."""

from __future__ import annotations

import asyncio

import pytest

from routing_sidecar.service.waiting import wake_or_timeout


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
