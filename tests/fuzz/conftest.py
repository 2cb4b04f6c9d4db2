"""A real sidecar for the fuzz suite, serving from a thread of its own, and the profiles.

Hypothesis drives synchronous test functions, so the sidecar (grpc.aio server, real SQLite
under a temporary directory) and the channel to it live on one event loop in a background
thread; each example runs its calls there over that real channel. One sidecar serves a whole
module: what the examples must not change is compared before and after each of them.

Profiles: `quick` (the default, in `make test`: few examples, derandomized, a few seconds),
`fuzz` (`make fuzz`: many examples, random, failures kept in .hypothesis/ for replay).
Choose with ROUTING_FUZZ_PROFILE.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings

from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict

T = TypeVar("T")

# No deadline: the machine is shared, and a slow example is not a wrong one.
settings.register_profile(
    "quick", max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "fuzz", max_examples=3000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile(os.environ.get("ROUTING_FUZZ_PROFILE", "quick"))

# Small caps, so that examples reach RESOURCE_EXHAUSTED too; glob budgets, so that every
# project and worker an example brings would show in GetBudgetStatus.
LIMITS = {"max_projects": 6, "max_workers": 3, "max_lanes": 3, "max_label_values": 3}
BUDGETS = [
    {"scope": "global", "period": "day", "limit_usd": 50, "on_exceed": "downgrade"},
    {"scope": "project:*", "period": "day", "limit_usd": 0.5},
    {"scope": "worker:*", "period": "month", "limit_usd": 5},
    {"scope": "task", "limit_usd": 1.00, "on_exceed": "downgrade"},
]
DOCUMENTED = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
})


class ErrorLog(logging.Handler):
    """Keeps every record logged at ERROR or with a traceback, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


class LiveSidecar:
    """A started sidecar and a channel to it, on an event loop in a background thread."""

    def __init__(self, tmp: Path) -> None:
        raw = config_dict(tmp)
        raw["limits"] = LIMITS
        raw["budgets"] = BUDGETS
        self.car = Sidecar(parse_config(yaml.safe_dump(raw), "fuzz"))
        self.db = tmp / "routing.db"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sidecar",
                                        daemon=True)
        self.errors = ErrorLog()

    def run(self, fn: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
        """Run `fn()` on the sidecar's loop and wait for its result."""
        async def wrapped() -> T:
            return await fn()
        fut: Future[T] = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        return fut.result(timeout)

    def start(self) -> None:
        self._thread.start()
        self.run(self.car.start)

        async def connect() -> None:
            self.channel = grpc.aio.insecure_channel(self.car.address)
            self.stub = pb_grpc.RouterStub(self.channel)
        self.run(connect)

    def stop(self) -> None:
        async def close() -> None:
            await self.channel.close()
            await self.car.stop()
        self.run(close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def books(self) -> tuple[Any, ...]:
        """What a refused request must leave alone: budget standing and every audit table."""
        status = self.run(lambda: self.stub.GetBudgetStatus(pb.BudgetQuery()))
        with sqlite3.connect(self.db) as db:
            counts = tuple(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in (
                "model_routing_decisions", "model_selections", "decision_outcomes",
                "budget_ledger"))
        return status.SerializeToString(deterministic=True), counts


    def serving(self) -> bool:
        """True when standard health says SERVING for the Router."""
        health = health_pb2_grpc.HealthStub(self.channel)
        resp = self.run(lambda: health.Check(
            health_pb2.HealthCheckRequest(service="routing_sidecar.v1.Router")))
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSidecar]:
    """One real sidecar per fuzz module, its errors and tracebacks collected from any thread."""
    sidecar = LiveSidecar(tmp_path_factory.mktemp("fuzz"))
    logging.getLogger().addHandler(sidecar.errors)
    sidecar.start()
    try:
        yield sidecar
    finally:
        sidecar.stop()
        logging.getLogger().removeHandler(sidecar.errors)
