"""CompleteService over the in-memory store and the in-process fake provider: no gRPC, no disk.

The walk's arithmetic and its failure paths that a real server makes hard to reach: backoff
waits (recorded, not slept), the caller's deadline bounding them, a store that cannot commit a
fallback's reservation or the outcome, a dry run refused before anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import pytest
import yaml

from routing_sidecar import logs
from routing_sidecar.calls import ChatMessage, Role, TextDelta
from routing_sidecar.config import parse_config
from routing_sidecar.domain import AttemptStatus, Decision, Task
from routing_sidecar.errors import InvalidArgument
from routing_sidecar.providers.fake import FakeProvider
from routing_sidecar.providers.registry import ProviderRegistry
from routing_sidecar.service.complete import (
    CompleteEvent,
    CompleteRequest,
    CompleteService,
    Done,
    ExecutedAttempt,
    Execution,
    coalesce,
    ready_batches,
)
from tests.fakes import Stack, service_stack

MESSAGES = (ChatMessage(Role.USER, "name three rivers"),)


def model(provider: str, upstream: str, price: float, quality: float) -> dict[str, Any]:
    return {"provider": provider, "upstream_model": upstream, "tier": 1,
            "input_per_mtok": price, "output_per_mtok": price, "context_window": 100_000,
            "tokens_per_s": 100, "quality": quality}


def build(scripts: dict[str, str] | None = None, *, retry: dict[str, float] | None = None,
          budgets: list[dict[str, Any]] | None = None) -> tuple[Stack, CompleteService,
                                                                list[float]]:
    scripts = {"a": "fake", "b": "fake", "c": "fake", **(scripts or {})}
    raw = {
        "providers": {p: {"kind": "fake"} for p in ("pa", "pb", "pc")},
        "models": {"a": model("pa", scripts["a"], 0.1, 0.95),
                   "b": model("pb", scripts["b"], 0.5, 0.85),
                   "c": model("pc", scripts["c"], 1.0, 0.8)},
        "policies": {"main": {"models": ["a", "b", "c"], "fallbacks": 2,
                              "retry": retry or {"max_retries": 2, "base_backoff_s": 0.1,
                                                 "max_backoff_s": 5.0}}},
        "default_policy": "main",
        "budgets": budgets or [{"scope": "global", "period": "day", "limit_usd": 10}],
    }
    cfg = parse_config(yaml.safe_dump(raw), "test")
    stack = service_stack(cfg.settings())
    ex = cfg.execution_settings()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the walk's backoff, recorded instead of slept
        waits.append(seconds)

    svc = CompleteService(stack.routing, stack.outcomes, stack.store, stack.clock,
                          Execution(ProviderRegistry.from_settings(ex), ex), sleep=sleep)
    return stack, svc, waits


def req(**kw: Any) -> CompleteRequest:
    return CompleteRequest(Task(kw.pop("task_id", "t-1"), "job", **kw), MESSAGES)


async def run(svc: CompleteService, request: CompleteRequest, timeout_s: float | None = None,
              on: Any = None) -> list[CompleteEvent]:
    events: list[CompleteEvent] = []
    gen = svc.complete(request, timeout_s=timeout_s)
    async with contextlib.aclosing(gen):
        async for event in gen:
            events.append(event)
            if on is not None:
                on(event)
    return events


def attempts(events: list[CompleteEvent]) -> list[tuple[str, AttemptStatus]]:
    return [(e.model, e.status) for e in events if isinstance(e, ExecutedAttempt)]


def done(events: list[CompleteEvent]) -> Done:
    last = events[-1]
    assert isinstance(last, Done)
    return last


async def test_backoff_waits_at_least_retry_after_and_at_most_the_cap() -> None:
    _, svc, waits = build({"a": "fake-flaky-2-503-2"})
    events = await run(svc, req())
    assert attempts(events) == [("a", AttemptStatus.TRANSIENT_ERROR)] * 2 + [
        ("a", AttemptStatus.SUCCESS)]
    assert len(waits) == 2 and all(2.0 <= w <= 5.0 for w in waits)


async def test_full_jitter_stays_under_the_exponential_cap() -> None:
    _, svc, waits = build({"a": "fake-500"}, retry={"max_retries": 3, "base_backoff_s": 0.5,
                                                    "max_backoff_s": 1.5})
    await run(svc, req())
    assert len(waits) == 3
    assert [w <= cap for w, cap in zip(waits, (0.5, 1.0, 1.5), strict=True)] == [True] * 3


async def test_the_deadline_bounds_the_backoff() -> None:
    _, svc, waits = build({"a": "fake-503-2"})
    events = await run(svc, req(), timeout_s=1.0)  # a 2 s wait does not fit: next model now
    assert attempts(events) == [("a", AttemptStatus.TRANSIENT_ERROR), ("b", AttemptStatus.SUCCESS)]
    assert waits == []


async def test_no_time_left_sends_nothing() -> None:
    stack, svc, _ = build()
    events = await run(svc, req(), timeout_s=0.01)  # less than the walk's margin
    d = done(events)
    assert not d.success and d.retryable and d.attempts == ()
    assert "deadline" in d.error
    client = svc.execution.providers.get("pa")
    assert isinstance(client, FakeProvider) and client.requests_seen("fake") == 0
    (decision_id,) = stack.store.decisions
    assert stack.store.outcomes[decision_id].actual_cost_micros == 0  # its hold released
    (status,) = stack.ledger.status(stack.clock.now(), ("global",))
    assert status.reserved_micros == 0


async def test_a_dry_run_is_refused_before_anything_is_written() -> None:
    stack, svc, _ = build()
    with pytest.raises(InvalidArgument) as err:
        await run(svc, req(dry_run=True))
    assert err.value.field == "route.dry_run"
    assert stack.store.decisions == {} and stack.store.ledger == []


async def test_the_prompt_size_stands_in_for_a_missing_input_estimate() -> None:
    _, svc, _ = build()
    long = (ChatMessage(Role.USER, "word " * 100_000),)  # ~125k tokens: above every window
    events = await run(svc, CompleteRequest(Task("t-1", "job"), long))
    decision = events[0]
    assert isinstance(decision, Decision)
    assert {a.rejection.value for a in decision.selection.alternatives} == {"context_window"}
    assert not done(events).success


async def test_a_fallback_whose_reservation_cannot_commit_is_skipped() -> None:
    stack, svc, _ = build({"a": "fake-500"}, retry={"max_retries": 0, "base_backoff_s": 0,
                                                    "max_backoff_s": 0})

    def fail_next_write(event: CompleteEvent) -> None:
        if isinstance(event, Decision):
            stack.store.fail_writes = 1  # b's reservation; c's commits

    events = await run(svc, req(), on=fail_next_write)
    assert attempts(events) == [("a", AttemptStatus.TRANSIENT_ERROR), ("c", AttemptStatus.SUCCESS)]
    (status,) = stack.ledger.status(stack.clock.now(), ("global",))
    assert status.reserved_micros == 0  # b's refused hold was reverted, c's released
    assert status.spent_micros == done(events).cost_micros


async def test_an_outcome_the_store_cannot_commit_still_ends_with_done(
        caplog: pytest.LogCaptureFixture) -> None:
    stack, svc, _ = build()

    def fail_the_outcome(event: CompleteEvent) -> None:
        if isinstance(event, ExecutedAttempt):
            stack.store.fail_writes = 1

    events = await run(svc, req(), on=fail_the_outcome)
    d = done(events)
    assert d.success and d.cost_micros == sum(
        e.cost_micros for e in events if isinstance(e, ExecutedAttempt))
    assert stack.store.outcomes == {}
    assert any("could not be recorded" in r.getMessage() for r in caplog.records)
    (status,) = stack.ledger.status(stack.clock.now(), ("global",))
    assert status.spent_micros == 0  # reverted with the failed commit; held until it expires
    assert status.reserved_micros > 0


async def test_closing_the_events_early_still_settles_what_ran() -> None:
    stack, svc, _ = build({"a": "fake-tps-50-tokens-100"})
    gen = svc.complete(CompleteRequest(Task("t-1", "job"), MESSAGES, stream=True))
    seen = 0
    async with contextlib.aclosing(gen):
        async for event in gen:
            seen += isinstance(event, TextDelta)
            if seen == 2:
                break  # the caller stops reading: aclosing closes the walk
    await svc.drain()
    (decision_id,) = stack.store.decisions
    (attempt,) = stack.store.attempts[decision_id]
    assert attempt.status is AttemptStatus.CANCELLED and attempt.output_tokens >= 2
    assert stack.store.outcomes[decision_id].actual_cost_micros == attempt.actual_cost_micros


def test_coalesce_joins_only_adjacent_text() -> None:
    a = ExecutedAttempt(0, "a", "pa", AttemptStatus.SUCCESS, 0.0, 0.1, 1, 2, 3)
    events: list[CompleteEvent] = [TextDelta("x"), TextDelta(" y"), a, TextDelta("z")]
    assert coalesce(events) == [TextDelta("x y"), a, TextDelta("z")]
    assert coalesce([]) == []


async def test_ready_batches_hand_on_errors_and_close_the_source_early() -> None:
    closed: list[str] = []

    async def source(fail: bool) -> AsyncGenerator[CompleteEvent, None]:
        try:
            yield TextDelta("a")
            yield TextDelta("b")
            if fail:
                raise InvalidArgument("messages", "boom")
            await asyncio.sleep(30)  # a slow provider: the consumer stops before this ends
            yield TextDelta("never")
        finally:
            closed.append("closed")

    got: list[CompleteEvent] = []
    with pytest.raises(InvalidArgument):
        async with contextlib.aclosing(ready_batches(source(True))) as batches:
            async for batch in batches:
                got += batch
    assert "".join(e.text for e in got if isinstance(e, TextDelta)) == "ab"
    async with contextlib.aclosing(ready_batches(source(False))) as batches:
        async for batch in batches:
            assert batch
            break
    assert closed == ["closed", "closed"]


def test_logs_configure_quiets_the_http_client() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("DEBUG", json_lines=True)
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("httpcore").getEffectiveLevel() == logging.WARNING
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name in logs.QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
