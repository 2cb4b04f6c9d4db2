"""Waiting in background loops without losing a stop request."""

from __future__ import annotations

import asyncio
import contextlib


async def wake_or_timeout(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set or `timeout_s` passes; True when it was set.

    `asyncio.wait_for` on Python 3.11 swallows a cancellation that arrives just as the event
    is set, and a loop built on it then never stops; `asyncio.timeout` passes it on.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout_s)):
            await event.wait()
    return event.is_set()
