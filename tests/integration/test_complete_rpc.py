"""Complete through a real gRPC server against real HTTP providers on loopback.

The providers are the bundled fake (routing_sidecar.providers.fake_server, both wire formats,
scripted by model name) and an independent stub (tests/provider_stub.py) replaying canned
bytes; the sidecar is a real Sidecar with its SQLite store under tmp_path.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf.duration_pb2 import Duration

from routing_sidecar.calls import ChatMessage, Role
from routing_sidecar.config import parse_config
from routing_sidecar.providers.fake_server import FakeProviderServer
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from tests.fakes import PROMPT, expected_answer, prompt_words
from tests.integration.complete_env import (
    KEY,
    KEY_ENV,
    Seen,
    complete,
    complete_config,
    config_raw,
    request,
    running,
    take,
    until,
)
from tests.provider_stub import ProviderStub, StubReply, data

SUCCESS = pb.ATTEMPT_STATUS_SUCCESS
TRANSIENT = pb.ATTEMPT_STATUS_TRANSIENT_ERROR
PERMANENT = pb.ATTEMPT_STATUS_PERMANENT_ERROR
LIMITED = pb.ATTEMPT_STATUS_RATE_LIMITED
CANCELLED = pb.ATTEMPT_STATUS_CANCELLED


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviderServer]:
    async with FakeProviderServer() as server:
        yield server


@pytest.fixture
def stub() -> Iterator[ProviderStub]:
    server = ProviderStub().start()
    yield server
    server.stop()


def price(model: str, input_tokens: int, output_tokens: int) -> int:
    """The catalog price of tokens in complete_env, computed independently (micro-USD)."""
    per_mtok = {"m-alpha": 100_000, "m-beta": 500_000, "m-gamma": 1_000_000}[model]
    return -(-(input_tokens * per_mtok + output_tokens * per_mtok * 4) // 1_000_000)


def rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


async def spent(stub: object) -> int:
    statuses = await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["global"]))  # type: ignore[attr-defined]
    (status,) = statuses.budgets
    assert status.reserved_micros == 0, "a reservation is still held after the walk"
    return int(status.spent_micros)


def models_of(seen: Seen) -> list[tuple[str, int]]:
    return [(a.model, a.status) for a in seen.attempts]


# --- the answer, its events and its charge -------------------------------------------------

@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_in_either_wire_format_streamed_or_whole(
        tmp_path: Path, fake: FakeProviderServer, kind: str, stream: bool) -> None:
    cfg = complete_config(tmp_path, fake.base_url, kinds={"alpha": kind})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request(stream))
        charged = await spent(stub)
    answer = expected_answer("fake")
    assert seen.code == grpc.StatusCode.OK, seen.details
    assert seen.shape() == ["decision", *(["delta*"] if stream else []), "attempt", "done"]
    assert seen.decision is not None and seen.decision.model == "m-alpha"
    done = seen.done
    assert done is not None and done.success and done.decision_id == seen.decision.decision_id
    assert seen.text == answer and (done.text == ("" if stream else answer))
    assert bool(seen.deltas) is stream  # deltas coalesce what arrives while one is written
    assert (done.model, done.provider, done.finish_reason) == ("m-alpha", "alpha", "stop")
    (attempt,) = seen.attempts
    assert list(done.attempts) == [attempt]
    (record,) = fake.requests()
    assert record.path == ("/v1/chat/completions" if kind == "openai" else "/v1/messages")
    assert record.stream is stream and record.finished and not record.disconnected
    # Usage as the provider reported it; cost = those tokens at the catalog's prices.
    assert (attempt.input_tokens, attempt.output_tokens) == (prompt_words(), record.tokens_sent)
    assert attempt.cost_micros == price("m-alpha", prompt_words(), record.tokens_sent)
    assert done.cost_micros == attempt.cost_micros == charged
    assert (done.input_tokens, done.output_tokens) == (prompt_words(), record.tokens_sent)
    assert attempt.status == SUCCESS and attempt.index == 0 and not attempt.hedged
    db = Path(cfg.store.path)
    assert rows(db, "SELECT actual_cost_micros, success FROM decision_outcomes") == [(charged, 1)]
    assert rows(db, "SELECT model, status, input_tokens, output_tokens FROM model_selections") \
        == [("m-alpha", "SUCCESS", prompt_words(), record.tokens_sent)]


async def test_a_provider_reported_cost_is_charged_even_above_the_estimate(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-cost-250000"})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
        charged = await spent(stub)
    assert seen.decision is not None and seen.decision.estimated_cost_micros < 250_000
    assert seen.done is not None and seen.done.success
    assert seen.attempts[0].cost_micros == seen.done.cost_micros == charged == 250_000


async def test_the_request_parameters_reach_the_provider(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-tokens-9"},
                          policy={"temperature": 0.3, "max_output_tokens": 50})
    async with running(cfg) as (_, stub):
        req = request(max_output_tokens=4)
        req.temperature, req.response_format = 0.7, "json_object"
        req.stop.append("END")
        seen = await complete(stub, req)
        seen_policy = await complete(stub, request(task_id="t-2"))
    assert seen.done is not None and seen.done.finish_reason == "length"
    assert seen.words == 4
    first, second = (r.body for r in fake.requests())
    assert (first["temperature"], first["max_tokens"], first["stop"]) == (0.7, 4, ["END"])
    assert first["response_format"] == {"type": "json_object"}
    assert (second["temperature"], second["max_tokens"]) == (0.3, 50)  # the policy's
    assert seen_policy.done is not None and seen_policy.done.success


# --- the independent stub: canned bytes, both formats --------------------------------------

def _anthropic(event: str, payload: dict[str, object]) -> str:
    return f"event: {event}\n{data(payload)}"


OPENAI_CHUNKS = [
    data({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-x",
          "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"},
                       "finish_reason": None}]}),
    ": keep-alive\n\n",
    data({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-x",
          "choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": "stop"}]}),
    data({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-x", "choices": [],
          "usage": {"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23}}),
    data("[DONE]"),
]
ANTHROPIC_FRAMES = [
    _anthropic("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [],
        "model": "claude-x", "usage": {"input_tokens": 25, "output_tokens": 1}}}),
    _anthropic("ping", {"type": "ping"}),
    _anthropic("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "Hello"}}),
    _anthropic("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": " world"}}),
    _anthropic("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                 "usage": {"output_tokens": 3}}),
    _anthropic("message_stop", {"type": "message_stop"}),
]


@pytest.mark.parametrize(("kind", "reply", "usage"), [
    ("openai", StubReply(sse=OPENAI_CHUNKS), (21, 2)),
    ("anthropic", StubReply(sse=ANTHROPIC_FRAMES), (25, 3)),
    ("openai", StubReply(body={"id": "c2", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello world"},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": 21, "completion_tokens": 2}}),
     (21, 2)),
    ("anthropic", StubReply(body={"id": "msg_2", "type": "message", "role": "assistant",
                                  "content": [{"type": "text", "text": "Hello world"}],
                                  "stop_reason": "end_turn",
                                  "usage": {"input_tokens": 25, "output_tokens": 3}}), (25, 3)),
], ids=["openai-sse", "anthropic-sse", "openai-whole", "anthropic-whole"])
async def test_an_independent_server_in_either_format(
        tmp_path: Path, stub: ProviderStub, kind: str, reply: StubReply,
        usage: tuple[int, int]) -> None:
    stub.push(reply)
    cfg = complete_config(tmp_path, stub.base_url, {"m-alpha": "upstream-x"},
                          kinds={"alpha": kind})
    async with running(cfg) as (_, grpc_stub):
        seen = await complete(grpc_stub, request(stream=reply.sse is not None))
        charged = await spent(grpc_stub)
    assert seen.code == grpc.StatusCode.OK, seen.details
    assert seen.text == "Hello world"
    (attempt,) = seen.attempts
    assert (attempt.input_tokens, attempt.output_tokens) == usage
    assert attempt.cost_micros == price("m-alpha", *usage) == charged
    (received,) = stub.received
    assert received.body["model"] == "upstream-x"
    auth = received.headers.get("authorization") or received.headers.get("x-api-key")
    assert auth in (f"Bearer {KEY}", KEY)


# --- failures, retries and fallbacks -------------------------------------------------------

@pytest.mark.parametrize("retries", [0, 2])
async def test_fallback_after_500s_with_the_policy_retry_count(
        tmp_path: Path, fake: FakeProviderServer, retries: int) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-500"}, policy={
        "retry": {"max_retries": retries, "base_backoff_s": 0.01, "max_backoff_s": 0.05}})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
        charged = await spent(stub)
    assert seen.code == grpc.StatusCode.OK and seen.done is not None and seen.done.success
    assert models_of(seen) == [("m-alpha", TRANSIENT)] * (retries + 1) + [("m-beta", SUCCESS)]
    assert [a.index for a in seen.attempts] == list(range(retries + 2))
    assert all(a.error_type == "http_500" and a.cost_micros == 0 for a in seen.attempts[:-1])
    assert [r.model for r in fake.requests()] == ["fake-500"] * (retries + 1) + ["fake"]
    assert seen.done.model == "m-beta" and charged == seen.attempts[-1].cost_micros
    # Only the fallback's text was streamed: the failures came before any token.
    assert seen.text == expected_answer("fake")


async def test_a_401_is_never_retried(tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-401"})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
    assert models_of(seen) == [("m-alpha", PERMANENT), ("m-beta", SUCCESS)]
    assert seen.attempts[0].error_type == "http_401"
    assert [r.model for r in fake.requests()] == ["fake-401", "fake"]


async def test_429_retry_after_is_waited_out(tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-flaky-1-429-1"}, policy={
        "retry": {"max_retries": 1, "base_backoff_s": 0.001, "max_backoff_s": 2.0}})
    async with running(cfg) as (_, stub):
        t0 = time.monotonic()
        seen = await complete(stub, request())
        elapsed = time.monotonic() - t0
    assert models_of(seen) == [("m-alpha", LIMITED), ("m-alpha", SUCCESS)]
    first, second = seen.attempts
    assert first.retry_after.ToTimedelta().total_seconds() == 1.0
    first_ended = first.started_at.ToNanoseconds() + first.duration.ToNanoseconds()
    waited_s = (second.started_at.ToNanoseconds() - first_ended) / 1e9
    assert waited_s >= 1.0 - 0.005  # started_at is wall-clock, durations monotonic
    assert elapsed >= 1.0


async def test_a_retry_after_beyond_max_backoff_moves_on_at_once(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-429-30"}, policy={
        "retry": {"max_retries": 2, "base_backoff_s": 0.01, "max_backoff_s": 1.0}})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
    assert models_of(seen) == [("m-alpha", LIMITED), ("m-beta", SUCCESS)]
    first, second = seen.attempts
    gap_s = (second.started_at.ToNanoseconds() - first.started_at.ToNanoseconds()) / 1e9
    assert gap_s < 30.0  # it did not wait out the 30 s asked for


async def test_when_every_model_fails_transiently_the_rpc_ends_unavailable(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    scripts = {"m-alpha": "fake-503", "m-beta": "fake-529", "m-gamma": "fake-500"}
    cfg = complete_config(tmp_path, fake.base_url, scripts, policy={
        "retry": {"max_retries": 0, "base_backoff_s": 0.0, "max_backoff_s": 0.0}})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
        charged = await spent(stub)
    assert seen.shape() == ["decision", "attempt", "attempt", "attempt", "done"]
    assert seen.done is not None and not seen.done.success
    assert (seen.done.model, seen.done.finish_reason) == ("m-gamma", "error")
    assert "http 500" in seen.done.error.lower()
    assert seen.code == grpc.StatusCode.UNAVAILABLE and seen.details == seen.done.error
    assert charged == 0


async def test_a_permanent_failure_in_the_chain_ends_failed_precondition(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    scripts = {"m-alpha": "fake-503", "m-beta": "fake-400", "m-gamma": "fake-404"}
    cfg = complete_config(tmp_path, fake.base_url, scripts, policy={
        "retry": {"max_retries": 0, "base_backoff_s": 0.0, "max_backoff_s": 0.0}})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
    assert [a.status for a in seen.attempts] == [TRANSIENT, PERMANENT, PERMANENT]
    assert seen.code == grpc.StatusCode.FAILED_PRECONDITION


# --- a stream cut after two tokens ----------------------------------------------------------

async def test_a_cut_stream_ends_with_its_error_without_resume(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-cut-2"})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
        charged = await spent(stub)
    assert seen.shape() == ["decision", "delta*", "attempt", "done"]
    assert seen.text == " ".join(expected_answer("fake").split(" ")[:2])
    (attempt,) = seen.attempts
    assert (attempt.status, attempt.error_type, attempt.output_tokens) == (
        TRANSIENT, "stream_error", 2)
    assert seen.done is not None and not seen.done.success
    assert seen.code == grpc.StatusCode.UNAVAILABLE
    assert [r.model for r in fake.requests()] == ["fake-cut-2"]  # no fallback after tokens
    # The two tokens (and the prompt, estimated: the stream never said) are charged.
    assert attempt.cost_micros == charged > 0


async def test_a_cut_stream_resumes_on_the_next_model_given_the_partial_answer(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-cut-2"},
                          policy={"resume_on_stream_failure": True})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
        charged = await spent(stub)
    partial = seen.segments[0]
    assert partial == " ".join(expected_answer("fake").split(" ")[:2])
    assert seen.shape() == ["decision", "delta*", "attempt", "delta*", "attempt", "done"]
    assert models_of(seen) == [("m-alpha", TRANSIENT), ("m-beta", SUCCESS)]
    assert seen.done is not None and seen.done.success and seen.done.model == "m-beta"
    resumed = fake.requests()[1]
    assert resumed.path == "/v1/messages"  # m-beta speaks Anthropic: the partial is prefilled
    assert resumed.body["messages"][-1] == {"role": "assistant", "content": partial}
    continuation = expected_answer("fake", (*PROMPT, ChatMessage(Role.ASSISTANT, partial)))
    assert seen.segments[1] == continuation
    assert charged == sum(a.cost_micros for a in seen.attempts)


async def test_a_whole_answer_cut_before_it_arrived_falls_back_transparently(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-cut-2"}, policy={
        "retry": {"max_retries": 0, "base_backoff_s": 0.0, "max_backoff_s": 0.0}})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request(stream=False))
    assert seen.shape() == ["decision", "attempt", "attempt", "done"]
    assert seen.done is not None and seen.done.success and seen.done.text == expected_answer(
        "fake")


# --- hedging --------------------------------------------------------------------------------

async def test_hedging_keeps_the_faster_model_and_cancels_the_slower(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-slow-5000"},
                          policy={"hedge_after_ms": 100})
    async with running(cfg) as (_, stub):
        t0 = time.monotonic()
        seen = await complete(stub, request())
        elapsed = time.monotonic() - t0
        charged = await spent(stub)
    slow = await fake.wait_for(lambda r: r.model == "fake-slow-5000" and r.disconnected)
    assert slow.tokens_sent == 0 and not slow.finished  # its server saw the disconnect
    assert elapsed < 5.0  # the slow model's first token was never waited for
    assert models_of(seen) == [("m-alpha", CANCELLED), ("m-beta", SUCCESS)]
    loser, winner = seen.attempts
    assert (loser.index, loser.hedged, winner.index, winner.hedged) == (0, False, 1, True)
    assert seen.shape() == ["decision", "attempt", "delta*", "attempt", "done"]
    assert seen.text == expected_answer("fake") and seen.done is not None
    assert seen.done.success and seen.done.model == "m-beta"
    # Both are charged what they used: the loser its prompt, the winner its whole answer.
    assert loser.output_tokens == 0 and loser.cost_micros > 0
    assert charged == loser.cost_micros + winner.cost_micros == seen.done.cost_micros


async def test_no_hedge_when_the_chosen_model_answers_in_time(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, policy={"hedge_after_ms": 3000})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
    assert models_of(seen) == [("m-alpha", SUCCESS)]
    assert [r.model for r in fake.requests()] == ["fake"]


async def test_a_hedge_that_fails_leaves_the_chosen_model_running(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url,
                          {"m-alpha": "fake-slow-600", "m-beta": "fake-500"},
                          policy={"hedge_after_ms": 50})
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
    assert models_of(seen) == [("m-beta", TRANSIENT), ("m-alpha", SUCCESS)]
    assert [a.index for a in seen.attempts] == [1, 0]  # events in the order attempts ended
    assert seen.done is not None and [a.index for a in seen.done.attempts] == [0, 1]
    assert seen.done.model == "m-alpha"


# --- cancellation and deadlines --------------------------------------------------------------

async def test_client_cancellation_closes_upstream_and_charges_consumed_tokens(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-tps-20-tokens-400"})
    async with running(cfg) as (car, stub):
        seen = Seen()
        call = stub.Complete(request(estimated_input_tokens=30), timeout=30)
        async for event in call:
            take(seen, event)
            if seen.words >= 3:
                call.cancel()
                break
        record = await fake.wait_for(lambda r: r.disconnected)
        assert seen.decision is not None and car.store is not None
        decision_id = seen.decision.decision_id
        store = car.store
        await until(lambda: store.get_outcome(decision_id))
        (attempt,) = await store.get_attempts(decision_id)
        outcome = await store.get_outcome(decision_id)
        charged = await spent(stub)
    assert not record.finished and record.tokens_sent < 400  # the upstream request was closed
    assert attempt.status.value == "CANCELLED" and attempt.error_type == "cancelled"
    # What was consumed: the prompt (the stream had not said its size yet: the task's
    # estimate) and every token received before the cancel.
    assert attempt.input_tokens == 30
    assert 3 <= attempt.output_tokens <= record.tokens_sent
    assert attempt.actual_cost_micros == price("m-alpha", 30, attempt.output_tokens)
    assert outcome is not None and not outcome.success
    assert charged == outcome.actual_cost_micros == attempt.actual_cost_micros


async def test_the_deadline_cancels_the_upstream_request_and_is_charged(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-slow-5000"})
    async with running(cfg) as (car, stub):
        t0 = time.monotonic()
        seen = await complete(stub, request(), deadline_s=0.6)
        elapsed = time.monotonic() - t0
        record = await fake.wait_for(lambda r: r.disconnected)
        assert car.store is not None and seen.decision is not None
        store, decision_id = car.store, seen.decision.decision_id
        await until(lambda: store.get_outcome(decision_id))
        (attempt,) = await store.get_attempts(decision_id)
        charged = await spent(stub)
    assert elapsed < 5.0 and record.tokens_sent == 0
    assert seen.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert attempt.status.value == "CANCELLED" and attempt.error_type == "deadline_exceeded"
    assert attempt.actual_cost_micros == charged > 0  # the prompt was sent: it is charged
    if seen.done is not None:  # the walk stops just short of the deadline to say so
        assert seen.done.finish_reason == "cancelled"


# --- budgets and breakers between attempts ---------------------------------------------------

async def _report_m_beta(stub: object, attempt: pb.Attempt) -> None:
    """Another orchestrator's decision-mode outcome for m-beta, through the public RPCs."""
    route = pb.RouteRequest(task_id="other", task_type="answer", exclude_models=["m-alpha"],
                            estimated_input_tokens=10)
    decision = await stub.Route(route)  # type: ignore[attr-defined]
    assert decision.model == "m-beta"
    await stub.ReportOutcome(pb.Outcome(  # type: ignore[attr-defined]
        decision_id=decision.decision_id, success=False, attempts=[attempt]))


@pytest.mark.parametrize("what", ["budget", "breaker"])
async def test_a_fallback_exhausted_or_broken_since_the_decision_is_skipped(
        tmp_path: Path, fake: FakeProviderServer, what: str) -> None:
    # m-alpha fails after 400 ms; meanwhile m-beta's budget is spent, or its breaker opens.
    budgets = [{"scope": "global", "period": "day", "limit_usd": 100},
               {"scope": "model:m-beta", "period": "day", "limit_usd": 0.01}]
    scripts = {"m-alpha": "fake-slow-400-cut-0", "m-beta": "fake-tokens-5"}
    cfg = complete_config(tmp_path, fake.base_url, scripts, budgets=budgets, policy={
        "retry": {"max_retries": 0, "base_backoff_s": 0.0, "max_backoff_s": 0.0}})
    async with running(cfg) as (_, stub):
        call = stub.Complete(request(stream=False), timeout=30)
        seen = Seen()
        async for event in call:
            take(seen, event)
            if event.HasField("decision"):
                assert [f.model for f in event.decision.fallbacks] == ["m-beta", "m-gamma"]
                if what == "budget":  # 20,000 input tokens of m-beta cost $0.01: all of it
                    await _report_m_beta(stub, pb.Attempt(
                        model="m-beta", status=SUCCESS, input_tokens=20_000))
                else:
                    await _report_m_beta(stub, pb.Attempt(
                        model="m-beta", status=LIMITED, error_type="http_429",
                        retry_after=Duration(seconds=60)))
    assert models_of(seen) == [("m-alpha", TRANSIENT), ("m-gamma", SUCCESS)]
    assert seen.done is not None and seen.done.success
    assert [r.model for r in fake.requests()] == ["fake-slow-400-cut-0", "fake"]  # no m-beta


async def test_when_the_only_fallback_is_out_of_budget_the_walk_says_so(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    budgets = [{"scope": "global", "period": "day", "limit_usd": 100},
               {"scope": "model:m-beta", "period": "day", "limit_usd": 0.01}]
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-slow-400-cut-0"},
                          budgets=budgets, policy={
                              "fallbacks": 1, "retry": {"max_retries": 0,
                                                        "base_backoff_s": 0.0,
                                                        "max_backoff_s": 0.0}})
    async with running(cfg) as (_, stub):
        call = stub.Complete(request(stream=False), timeout=30)
        seen = Seen()
        try:
            async for event in call:
                take(seen, event)
                if event.HasField("decision"):
                    await _report_m_beta(stub, pb.Attempt(model="m-beta", status=SUCCESS,
                                                          input_tokens=20_000))
        except grpc.aio.AioRpcError as exc:
            seen.code, seen.details = exc.code(), exc.details() or ""
        charged = await spent(stub)
    assert models_of(seen) == [("m-alpha", TRANSIENT)]
    assert seen.done is not None and "budget model:m-beta/day exhausted" in seen.done.error
    assert seen.code == grpc.StatusCode.FAILED_PRECONDITION  # a budget is no transient fault
    assert charged == 10_000 + seen.attempts[0].cost_micros  # the report's charge, m-alpha's


# --- credentials and bad requests -----------------------------------------------------------

async def test_models_without_credentials_are_taken_out_by_the_decision(
        tmp_path: Path, fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = config_raw(tmp_path, fake.base_url)
    raw["providers"]["beta"]["api_key_env"] = "NOT_SET_ANYWHERE"
    del raw["providers"]["gamma"]  # and m-gamma's provider has no entry at all
    del raw["models"]["m-gamma"]["upstream_model"]
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    cfg = parse_config(yaml.safe_dump(raw), "test")
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
        routed = await stub.Route(request().route)  # decision mode is not affected
    assert seen.decision is not None
    fate = {a.model: (a.rejection, a.reason) for a in seen.decision.alternatives}
    assert fate["m-beta"] == ("no_credentials", "no credentials for provider 'beta'")
    assert fate["m-gamma"][0] == "no_credentials" and "no entry" in fate["m-gamma"][1]
    assert list(seen.decision.fallbacks) == []
    assert seen.done is not None and seen.done.success
    assert [f.model for f in routed.fallbacks] == ["m-beta", "m-gamma"]


async def test_nothing_callable_is_a_refused_decision(
        tmp_path: Path, fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    cfg = complete_config(tmp_path, fake.base_url)
    async with running(cfg) as (_, stub):
        seen = await complete(stub, request())
    assert seen.shape() == ["decision", "done"]
    assert seen.decision is not None and seen.decision.status == pb.DECISION_STATUS_REJECTED
    assert seen.done is not None and not seen.done.success and "NO_CAPABLE_MODEL" in (
        seen.done.error)
    assert seen.code == grpc.StatusCode.FAILED_PRECONDITION
    assert fake.requests() == ()


def _bad(**changes: object) -> pb.CompleteRequest:
    req = request()
    for key, value in changes.items():
        if key == "messages":
            del req.messages[:]
            req.messages.extend(value)  # type: ignore[arg-type]
        elif key == "stop":
            req.stop.extend(value)  # type: ignore[arg-type]
        elif key.startswith("route."):
            setattr(req.route, key.removeprefix("route."), value)
        else:
            setattr(req, key, value)
    return req


@pytest.mark.parametrize(("req", "field"), [
    (_bad(messages=[]), "messages"),
    (_bad(messages=[pb.ChatMessage(role="robot", content="hi")]), "messages[0].role"),
    (_bad(messages=[pb.ChatMessage(role="system", content="be brief")]), "messages"),
    (_bad(temperature=2.5), "temperature"),
    (_bad(temperature=float("nan")), "temperature"),
    (_bad(stop=["a", "b", "c", "d", "e"]), "stop"),
    (_bad(stop=[""]), "stop[0]"),
    (_bad(response_format="xml"), "response_format"),
    (_bad(**{"route.task_type": ""}), "route.task_type"),
    (_bad(**{"route.priority": 300}), "route.priority"),
    (_bad(**{"route.dry_run": True}), "route.dry_run"),
    (_bad(**{"route.policy": "nope"}), "route.policy"),
], ids=lambda v: v if isinstance(v, str) else "")
async def test_bad_fields_are_refused_naming_the_field_and_nothing_is_written(
        tmp_path: Path, fake: FakeProviderServer, req: pb.CompleteRequest, field: str) -> None:
    cfg = complete_config(tmp_path, fake.base_url)
    async with running(cfg) as (_, stub):
        seen = await complete(stub, req)
        assert seen.kinds == []
        assert seen.code == grpc.StatusCode.INVALID_ARGUMENT
        assert seen.details.startswith(f"{field}:"), seen.details
        again = await complete(stub, request())  # and it keeps serving
        charged = await spent(stub)
    assert again.done is not None and again.done.success
    assert [r.model for r in fake.requests()] == ["fake"]
    db = Path(cfg.store.path)
    assert rows(db, "SELECT COUNT(*) FROM model_routing_decisions") == [(1,)]
    assert charged == again.done.cost_micros


async def test_an_unknown_slot_model_names_its_route_field(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url)
    async with running(cfg) as (_, stub):
        req = request()
        req.route.available_slots.append(pb.Slot(slot_id="w1", model="gpt-9"))
        seen = await complete(stub, req)
    assert seen.code == grpc.StatusCode.INVALID_ARGUMENT
    assert seen.details.startswith("route.available_slots[0].model:")
    assert fake.requests() == ()


async def test_concurrent_completes_are_each_answered_and_charged(
        tmp_path: Path, fake: FakeProviderServer) -> None:
    cfg = complete_config(tmp_path, fake.base_url, {"m-alpha": "fake-tps-200"})
    async with running(cfg) as (_, stub):
        seen = await asyncio.gather(*(complete(stub, request(task_id=f"t-{i}"))
                                      for i in range(24)))
        charged = await spent(stub)
    assert all(s.done is not None and s.done.success for s in seen)
    assert all(s.text == expected_answer("fake-tps-200") for s in seen)
    assert charged == sum(s.done.cost_micros for s in seen if s.done is not None)
    assert len({s.done.decision_id for s in seen if s.done is not None}) == 24
