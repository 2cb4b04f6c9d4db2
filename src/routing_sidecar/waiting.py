"""Waiting in background loops, and stopping them, without losing a stop request."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

RECANCEL_S = 0.2  # how long a cancelled task may go on before it is asked again


async def wake_or_timeout(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set or `timeout_s` passes; True when it was set.

    `asyncio.wait_for` on Python 3.11 swallows a cancellation that arrives just as the event
    is set, and a loop built on it then never stops; `asyncio.timeout` passes it on.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout_s)):
            await event.wait()
    return event.is_set()


async def stop_task(task: asyncio.Task[object] | None) -> None:
    """Cancel `task` and wait until it has ended, asking again while it goes on.

    A client library may lose a cancellation inside its own timeout and retry handling (the
    Redis pub/sub reader was seen to, once in a few hundred stops after Redis came back) and go
    on waiting; one `cancel()` and an `await` would then wait forever. The task's own result or
    error is logged, not raised: a stop only needs the task gone.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_S)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("background task %s had stopped on an error", task.get_name(), exc_info=exc)
