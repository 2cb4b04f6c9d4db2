"""Breakers and learned quality shared through a real redis-server, sidecar to sidecar."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from routing_sidecar.core.health import HealthBook
from routing_sidecar.core.learning import QualityBook
from routing_sidecar.domain import Attempt, AttemptStatus
from routing_sidecar.ports import QualityObservation as Observation
from routing_sidecar.settings import BreakerSettings, HealthSettings, LearningSettings
from routing_sidecar.storage.redis.health import SharedBreakers
from routing_sidecar.storage.redis.learning import SharedLearning
from tests.redis_server import RedisServer, redis_server
from tests.unit.conftest import spec

M1 = spec("m1", "p")
SETTINGS = HealthSettings(breaker=BreakerSettings(consecutive_failures=3, min_volume=100,
                                                  cooldown_s=30, probe_timeout_s=60))
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as s:
        yield s


@pytest.fixture
async def clients(server: RedisServer) -> AsyncIterator[list[aioredis.Redis]]:
    made = [aioredis.Redis.from_url(server.url) for _ in range(3)]
    await made[0].flushall()
    try:
        yield made
    finally:
        for c in made:
            await c.aclose()


async def until(check: object, timeout_s: float) -> float:
    """Seconds until check() is true; fails the test past the timeout."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():  # type: ignore[operator]
        if loop.time() - start > timeout_s:
            raise AssertionError(f"not seen within {timeout_s * 1000:.0f} ms")
        await asyncio.sleep(0.001)
    return loop.time() - start


async def test_a_breaker_opened_on_one_sidecar_is_seen_by_another_within_100_ms(
    clients: list[aioredis.Redis],
) -> None:
    a_book, b_book = HealthBook(SETTINGS), HealthBook(SETTINGS)
    a = SharedBreakers(clients[0], prefix="t:", origin="a")
    b = SharedBreakers(clients[1], prefix="t:", origin="b")
    await a.start(lambda c: a_book.apply_remote(c, T0))
    await b.start(lambda c: b_book.apply_remote(c, T0))
    try:
        for _ in range(3):
            a_book.record(Attempt("m1", "p", AttemptStatus.TIMEOUT), T0)
        assert a_book.blocked(M1, T0) is not None and b_book.blocked(M1, T0) is None
        await a.publish(a_book.drain_changes())
        await until(lambda: b_book.blocked(M1, T0 + 1) is not None, 0.1)
        assert b_book.blocked(M1, T0 + 1) == "circuit open until 08:00:30Z"
        # The sidecar that opened it probes; the other waits for its verdict.
        assert a_book.blocked(M1, T0 + 31) is None
        assert b_book.blocked(M1, T0 + 31) == "circuit half-open, probe in flight"
        # A sidecar that starts now learns of the open breaker at once.
        c_book = HealthBook(SETTINGS)
        c = SharedBreakers(clients[2], prefix="t:", origin="c")
        await c.start(lambda ch: c_book.apply_remote(ch, T0))
        assert c_book.blocked(M1, T0 + 1) is not None
        # The probe succeeds on a: everybody closes.
        a_book.on_routed(M1, T0 + 31)
        a_book.record(Attempt("m1", "p", AttemptStatus.SUCCESS, duration_s=1.0), T0 + 32)
        await a.publish(a_book.drain_changes())
        await until(lambda: b_book.blocked(M1, T0 + 33) is None
                    and c_book.blocked(M1, T0 + 33) is None, 0.1)
        await c.stop()
        assert b.received == 2 and a.received == 0  # nobody applies its own news
    finally:
        await a.stop()
        await b.stop()


def book() -> QualityBook:
    return QualityBook(LearningSettings(), {"m1": 0.7, "m2": 0.9}.__getitem__)


async def test_learning_on_one_sidecar_moves_another_s_estimate(
    clients: list[aioredis.Redis],
) -> None:
    a_book, b_book = book(), book()
    a = SharedLearning(clients[0], prefix="t:", forget=LearningSettings().forget)
    b = SharedLearning(clients[1], prefix="t:", forget=LearningSettings().forget)
    observed = []
    for _ in range(40):
        a_book.observe("triage", "m1", True, 0.97)
        observed.append(Observation("triage", "m1", 0.97, True, True))
    await a.push(observed)
    before = b_book.mean("triage", "m1")
    assert b_book.drain_unseen() == ["triage"]  # b decided on a type it knows nothing of
    rows, pooled = await b.pull(["triage"], ["m1", "m2"])
    b_book.merge(rows, pooled)
    assert before == pytest.approx(0.7)
    assert b_book.mean("triage", "m1") == pytest.approx(a_book.mean("triage", "m1"))
    assert b_book.signal("triage", "m1").samples == pytest.approx(
        a_book.signal("triage", "m1").samples)
    # The pool moved too: a new task type on b starts from what the fleet learned.
    assert b_book.mean("never-seen", "m1") == pytest.approx(a_book.mean("never-seen", "m1"))
    # b's own outcome joins the same sums; after a pull both books agree again.
    b_book.observe("triage", "m1", False, 0.1)
    await b.push([Observation("triage", "m1", 0.1, False, True)])
    for book_, shared in ((a_book, a), (b_book, b)):
        book_.merge(*await shared.pull(["triage"], ["m1", "m2"]))
    assert a_book.mean("triage", "m1") == pytest.approx(b_book.mean("triage", "m1"))
