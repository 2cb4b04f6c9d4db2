"""The event loop a served sidecar runs on (`server.event_loop`): uvloop unless told otherwise.

uvloop runs asyncio's callbacks, futures and sockets in C (libuv). Measured with
`python -m bench.latency.instructions`: a third fewer instructions per call for a no-op
grpc.aio server, and about 8% fewer for a Route, with nothing else changed.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from typing import Literal

from routing_sidecar.errors import ConfigError

EventLoop = Literal["auto", "uvloop", "asyncio"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: EventLoop, source: str) -> LoopFactory | None:
    """What `asyncio.Runner` should make its loop with; None for asyncio's own loop.

    `auto` takes uvloop when it is installed and asyncio's loop otherwise; `uvloop` on a
    machine without it is a configuration error naming `source`.
    """
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(source, ["server.event_loop: uvloop is not installed "
                                       "(pip install uvloop, or choose asyncio)"]) from None
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def running_loop_name() -> str:
    """`uvloop` or `asyncio`: which loop this coroutine runs on, for the start log."""
    kind = type(asyncio.get_running_loop())
    return "uvloop" if kind.__module__.startswith("uvloop") else "asyncio"
