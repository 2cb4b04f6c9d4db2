"""Provider adapters against real servers on loopback: the bundled fake (both wire formats)
and an independent stub (tests/provider_stub.py) replaying the providers' documented bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from routing_sidecar.calls import (
    CallParams,
    ExecutionSettings,
    FinishReason,
    ProviderKind,
    TextDelta,
    Usage,
)
from routing_sidecar.domain import AttemptStatus
from routing_sidecar.errors import ProviderError
from routing_sidecar.logs import JsonFormatter
from routing_sidecar.ports import ProviderClient
from routing_sidecar.providers.anthropic import AnthropicProvider
from routing_sidecar.providers.fake import FakeProvider
from routing_sidecar.providers.fake_server import FakeProviderServer
from routing_sidecar.providers.openai import OpenAIProvider
from routing_sidecar.providers.registry import ProviderRegistry, build_client
from tests.conftest import free_port
from tests.fakes import (
    PROMPT,
    TEST_ENV,
    TEST_KEY,
    collect,
    expected_answer,
    failure,
    prompt_words,
    provider_call,
    provider_settings,
)
from tests.provider_stub import ProviderStub, StubReply, data

WIRES = ("openai", "anthropic")
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


def base_url(kind: str, root: str) -> str:
    """Where each kind's base_url points: OpenAI's includes /v1, Anthropic's does not."""
    return f"{root}/v1" if kind == "openai" else root


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviderServer]:
    async with FakeProviderServer() as server:
        yield server


@pytest.fixture
def stub() -> Iterator[ProviderStub]:
    server = ProviderStub().start()
    yield server
    server.stop()


@pytest.fixture(params=WIRES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(kind: str, fake: FakeProviderServer) -> AsyncIterator[ProviderClient]:
    c = build_client(provider_settings(kind, base_url(kind, fake.base_url)), TEST_ENV)
    yield c
    await c.aclose()


async def make(kind: str, root: str, **overrides: Any) -> ProviderClient:
    return build_client(provider_settings(kind, base_url(kind, root), **overrides), TEST_ENV)


# --- both wire formats against the bundled fake --------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
async def test_answer_and_exact_usage(kind: str, stream: bool, client: ProviderClient,
                                      fake: FakeProviderServer) -> None:
    texts, end = await collect(client.stream(provider_call("fake-ok", stream=stream)))
    assert "".join(texts) == expected_answer("fake-ok")
    assert len(texts) == (len(expected_answer("fake-ok").split()) if stream else 1)
    (record,) = fake.requests()
    assert record.path == PATHS[kind] and record.model == "fake-ok"
    assert record.stream is stream and record.finished and not record.disconnected
    # Usage is what the server says it sent, and the prompt's words counted independently.
    assert end.usage == Usage(prompt_words(), record.tokens_sent, None, reported=True)
    assert record.tokens_sent == len(expected_answer("fake-ok").split())
    assert end.finish_reason is FinishReason.STOP


async def test_the_wire_request(kind: str, client: ProviderClient,
                                fake: FakeProviderServer) -> None:
    params = CallParams(temperature=0.2, stop=("END",), max_output_tokens=5)
    texts, end = await collect(client.stream(provider_call("fake-tokens-9", params=params)))
    assert len(texts) == 5 and end.finish_reason is FinishReason.LENGTH
    (record,) = fake.requests()
    body = record.body
    assert body["model"] == "fake-tokens-9" and body["temperature"] == 0.2
    if kind == "openai":
        assert record.headers["authorization"] == f"Bearer {TEST_KEY}"
        assert body["stream_options"] == {"include_usage": True}
        assert body["stop"] == ["END"] and body["max_tokens"] == 5
        assert body["messages"][0] == {"role": "system", "content": PROMPT[0].content}
    else:
        assert record.headers["x-api-key"] == TEST_KEY
        assert record.headers["anthropic-version"] == "2023-06-01"
        assert body["system"] == PROMPT[0].content
        assert body["messages"] == [{"role": "user", "content": PROMPT[1].content}]
        assert body["stop_sequences"] == ["END"] and body["max_tokens"] == 5


async def test_a_resumed_stream_sends_the_partial_answer(kind: str, client: ProviderClient,
                                                         fake: FakeProviderServer) -> None:
    await collect(client.stream(provider_call("fake-ok", assistant_prefix="Rivers have ")))
    messages = fake.requests()[0].body["messages"]
    if kind == "anthropic":
        assert messages[-1] == {"role": "assistant", "content": "Rivers have"}  # prefilled
    else:
        assert messages[-2] == {"role": "assistant", "content": "Rivers have "}
        assert messages[-1]["role"] == "user"


async def test_openrouter_cost_and_extra_headers(fake: FakeProviderServer) -> None:
    c = await make("openai", fake.base_url, name="openrouter",
                   headers={"HTTP-Referer": "https://app.example", "X-Title": "router"})
    try:
        for stream in (True, False):
            _, end = await collect(c.stream(provider_call("fake-cost-1500", stream=stream)))
            assert end.usage.cost_micros == 1500 and end.usage.reported
    finally:
        await c.aclose()
    headers = fake.requests()[0].headers
    assert headers["http-referer"] == "https://app.example" and headers["x-title"] == "router"


# --- failures ------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "status", "http_status"), [
    ("fake-500", AttemptStatus.TRANSIENT_ERROR, 500),
    ("fake-503", AttemptStatus.TRANSIENT_ERROR, 503),
    ("fake-529", AttemptStatus.TRANSIENT_ERROR, 529),
    ("fake-401", AttemptStatus.PERMANENT_ERROR, 401),
    ("fake-400", AttemptStatus.PERMANENT_ERROR, 400),
    ("fake-404", AttemptStatus.PERMANENT_ERROR, 404),
    ("fake-429", AttemptStatus.RATE_LIMITED, 429),
])
@pytest.mark.parametrize("stream", [True, False])
async def test_http_failures_are_classified(client: ProviderClient, model: str,
                                            status: AttemptStatus, http_status: int,
                                            stream: bool) -> None:
    texts, exc = await failure(client.stream(provider_call(model, stream=stream)))
    assert texts == []
    assert (exc.status, exc.http_status, exc.error_type) == (status, http_status,
                                                            f"http_{http_status}")
    assert exc.retryable is (status is not AttemptStatus.PERMANENT_ERROR)
    assert exc.usage == Usage(None, 0, None, reported=False)


@pytest.mark.parametrize(("model", "retry_after"), [("fake-429-2", 2.0),
                                                    ("fake-429ms-1500", 1.5),
                                                    ("fake-503-7", 7.0)])
async def test_retry_after_seconds_and_ms(client: ProviderClient, model: str,
                                          retry_after: float) -> None:
    _, exc = await failure(client.stream(provider_call(model)))
    assert exc.retry_after_s == retry_after


async def test_an_error_event_inside_a_200_stream(kind: str, client: ProviderClient,
                                                  fake: FakeProviderServer) -> None:
    texts, exc = await failure(client.stream(provider_call("fake-cut-2-error-event")))
    assert len(texts) == 2
    assert exc.status is AttemptStatus.TRANSIENT_ERROR and exc.http_status is None
    assert exc.error_type == ("overloaded_error" if kind == "anthropic" else "server_error")
    assert exc.usage.output_tokens == 2
    assert fake.requests()[0].status == 200


async def test_a_stream_cut_after_two_tokens_carries_the_partial_usage(
        kind: str, client: ProviderClient, fake: FakeProviderServer) -> None:
    texts, exc = await failure(client.stream(provider_call("fake-cut-2")))
    words = expected_answer("fake-ok").split(" ")
    assert texts == [words[0], " " + words[1]]  # the answer's first two tokens, as sent
    assert (exc.status, exc.error_type) == (AttemptStatus.TRANSIENT_ERROR, "stream_error")
    record = fake.requests()[0]
    assert record.server_cut and record.tokens_sent == 2
    # Output: the tokens streamed; input: known from message_start (Anthropic), not yet
    # (OpenAI reports it only in the final chunk).
    assert exc.usage == Usage(prompt_words() if kind == "anthropic" else None, 2, None, False)


async def test_connect_refused_is_transient(kind: str) -> None:
    c = await make(kind, f"http://127.0.0.1:{free_port()}")
    try:
        _, exc = await failure(c.stream(provider_call("fake-ok")))
    finally:
        await c.aclose()
    assert (exc.status, exc.error_type) == (AttemptStatus.TRANSIENT_ERROR, "connect_error")
    assert exc.retryable


async def test_first_token_timeout(kind: str, fake: FakeProviderServer) -> None:
    # The fake keeps the stream alive with comments / pings: those are not a first token.
    c = await make(kind, fake.base_url, first_token_timeout_s=0.3)
    try:
        _, exc = await failure(c.stream(provider_call("fake-slow-5000")))
    finally:
        await c.aclose()
    assert (exc.status, exc.error_type) == (AttemptStatus.TIMEOUT, "first_token_timeout")
    assert exc.retryable
    record = await fake.wait_for(lambda r: r.disconnected, timeout_s=5)
    assert record.tokens_sent == 0


async def test_a_whole_response_has_only_the_total_deadline(kind: str,
                                                            fake: FakeProviderServer) -> None:
    # Its one event is the whole answer: slower than first_token_timeout_s is fine ...
    c = await make(kind, fake.base_url, first_token_timeout_s=0.1, timeout_s=0.8)
    try:
        texts, _ = await collect(c.stream(provider_call("fake-slow-300", stream=False)))
        assert texts == [expected_answer("fake-slow-300")]
        # ... and slower than timeout_s is not.
        _, exc = await failure(c.stream(provider_call("fake-slow-5000", stream=False)))
    finally:
        await c.aclose()
    assert (exc.status, exc.error_type) == (AttemptStatus.TIMEOUT, "timeout")
    await fake.wait_for(lambda r: r.disconnected, timeout_s=5)


async def test_total_timeout_after_some_tokens(kind: str, fake: FakeProviderServer) -> None:
    c = await make(kind, fake.base_url, timeout_s=0.6, first_token_timeout_s=0.5)
    try:
        texts, exc = await failure(c.stream(provider_call("fake-tps-10-tokens-100")))
    finally:
        await c.aclose()
    assert (exc.status, exc.error_type) == (AttemptStatus.TIMEOUT, "timeout")
    assert texts and exc.usage.output_tokens == len(texts)
    await fake.wait_for(lambda r: r.disconnected, timeout_s=5)


async def test_flaky_fails_then_answers(client: ProviderClient) -> None:
    for _ in range(2):
        _, exc = await failure(client.stream(provider_call("fake-flaky-2")))
        assert exc.http_status == 500
    texts, _ = await collect(client.stream(provider_call("fake-flaky-2")))
    assert "".join(texts) == expected_answer("fake-flaky-2")


async def test_a_provider_without_its_key_makes_no_request(kind: str,
                                                           fake: FakeProviderServer) -> None:
    c = build_client(provider_settings(kind, base_url(kind, fake.base_url)), environ={})
    try:
        assert not c.has_credentials()
        _, exc = await failure(c.stream(provider_call("fake-ok")))
    finally:
        await c.aclose()
    assert (exc.status, exc.error_type) == (AttemptStatus.PERMANENT_ERROR, "no_credentials")
    assert fake.requests() == ()


async def test_a_keyless_endpoint_sends_no_auth_header(kind: str,
                                                       fake: FakeProviderServer) -> None:
    c = build_client(provider_settings(kind, base_url(kind, fake.base_url), key_required=False,
                                       api_key_env=None), environ={})
    try:
        assert c.has_credentials()
        await collect(c.stream(provider_call("fake-ok")))
    finally:
        await c.aclose()
    headers = fake.requests()[0].headers
    assert "authorization" not in headers and "x-api-key" not in headers


# --- cancellation --------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def leaks() -> AsyncIterator[list[Any]]:
    """Async generators the adapter dropped without closing, kept alive instead of closed.

    The event loop normally closes a dropped async generator (and freeing one would close its
    socket): a disconnect would then be seen by luck. Inside this block such generators are
    kept, so only the adapter's own close chain can end the upstream request, and the list of
    our own generators left unclosed must stay empty. (httpx-sse leaves httpx's inner
    `aiter_text` generator to the collector; harmless, since the response itself is closed.)
    Entered in the test body: the event loop re-installs its own hooks on every run.
    """
    kept: list[Any] = []
    ours: list[str] = []
    hooks = sys.get_asyncgen_hooks()

    def keep(agen: Any) -> None:
        kept.append(agen)
        if "routing_sidecar" in agen.ag_code.co_filename:
            ours.append(agen.ag_code.co_qualname)

    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=keep)
    try:
        yield ours
    finally:
        sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=hooks.finalizer)
        for agen in kept:
            await agen.aclose()


async def test_closing_the_iterator_mid_stream_disconnects_upstream(
        client: ProviderClient, fake: FakeProviderServer) -> None:
    async with leaks() as kept:
        events = client.stream(provider_call("fake-tps-20-tokens-200"))
        first = await anext(events)
        second = await anext(events)
        assert isinstance(first, TextDelta) and isinstance(second, TextDelta)
        await events.aclose()
        del events
        record = await fake.wait_for(lambda r: r.disconnected, timeout_s=5)
        assert kept == []
    assert not record.finished and 2 <= record.tokens_sent < 200


async def test_cancelling_the_consumer_disconnects_upstream(
        client: ProviderClient, fake: FakeProviderServer) -> None:
    async def consume() -> None:
        async for _ in client.stream(provider_call("fake-tps-20-tokens-200")):
            pass

    async with leaks() as kept:
        task = asyncio.create_task(consume())
        await fake.wait_for(lambda r: r.tokens_sent >= 1, timeout_s=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        del task
        record = await fake.wait_for(lambda r: r.disconnected, timeout_s=5)
        assert kept == []
    assert not record.finished


async def test_a_finished_stream_leaves_the_connection_for_the_next_call(
        client: ProviderClient, fake: FakeProviderServer) -> None:
    for _ in range(3):
        await collect(client.stream(provider_call("fake-ok")))
    assert all(r.finished and not r.disconnected for r in fake.requests())


@pytest.mark.parametrize(("limit", "serialised"), [(1, True), (4, False)])
async def test_max_connections_bounds_concurrent_calls(kind: str, fake: FakeProviderServer,
                                                       limit: int, serialised: bool) -> None:
    c = await make(kind, fake.base_url, max_connections=limit)
    try:
        tasks = [asyncio.create_task(collect(c.stream(provider_call("fake-tps-20-tokens-8"))))
                 for _ in range(2)]
        second = await fake.wait_for(lambda r: r.index == 2, timeout_s=10)
        first_done_when_second_arrived = fake.requests()[0].finished
        await asyncio.gather(*tasks)
    finally:
        await c.aclose()
    assert second.index == 2
    assert first_done_when_second_arrived is serialised


# --- keys never leak -----------------------------------------------------------------------

async def test_the_key_reaches_the_server_and_nothing_else(
        kind: str, fake: FakeProviderServer, stub: ProviderStub,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echoing = {"error": {"message": f"Incorrect API key provided: {TEST_KEY}. Or "
                                    f"{TEST_KEY[:6]}***{TEST_KEY[-4:]}",
                         "type": "invalid_request_error", "code": "invalid_api_key"}}
    stub.push(StubReply(401, echoing), StubReply(400, echoing), StubReply(500, echoing))
    failures: list[ProviderError] = []
    clients = [await make(kind, stub.base_url), await make(kind, fake.base_url,
                                                           first_token_timeout_s=0.2),
               await make(kind, f"http://127.0.0.1:{free_port()}")]
    try:
        for _ in range(3):
            failures.append((await failure(clients[0].stream(provider_call("m"))))[1])
        for model in ("fake-401", "fake-429-1", "fake-cut-1", "fake-error-event",
                      "fake-slow-3000"):
            failures.append((await failure(clients[1].stream(provider_call(model))))[1])
        failures.append((await failure(clients[2].stream(provider_call("fake-ok"))))[1])
    finally:
        for c in clients:
            await c.aclose()
    assert all(r.headers.get("authorization", r.headers.get("x-api-key", "")).endswith(TEST_KEY)
               for r in fake.requests())
    logger = logging.getLogger("routing_sidecar.test")
    for exc in failures:
        logger.warning("attempt failed: %s", exc, exc_info=exc)
        for shown in (str(exc), repr(exc), exc.message, repr(vars(exc))):
            assert TEST_KEY not in shown and TEST_KEY[-4:] not in shown, shown
    for c in clients:
        assert TEST_KEY not in repr(c)
    formatter = JsonFormatter()
    assert caplog.records
    for record in caplog.records:
        assert TEST_KEY not in formatter.format(record)
        assert TEST_KEY not in record.getMessage()


# --- the independent stub: the providers' documented bytes ---------------------------------

def openai_chunk(content: str | None, finish: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    return {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
            "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]}


OPENAI_STREAM = [
    ": OPENROUTER PROCESSING\n\n",
    data({**openai_chunk(None), "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                   "content": ""},
                                             "logprobs": None, "finish_reason": None}]}),
    data(openai_chunk("Hello")),
    ": keep-alive\n\n",
    data(openai_chunk("!")),
    data(openai_chunk(None, "stop")),
    data({"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
          "model": "gpt-4o-mini", "choices": [],
          "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
                    "cost": 0.0000123}}),
    data("[DONE]"),
]
OPENAI_WHOLE = {
    "id": "chatcmpl-123", "object": "chat.completion", "created": 1677652288,
    "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
    "choices": [{"index": 0, "message": {"role": "assistant",
                                         "content": "Hello there, how may I assist you today?"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
}


async def test_stub_openai_streaming(stub: ProviderStub) -> None:
    stub.push(StubReply(sse=OPENAI_STREAM, chunk_delay_s=0.01))
    c = await make("openai", stub.base_url)
    try:
        texts, end = await collect(c.stream(provider_call("gpt-4o-mini")))
    finally:
        await c.aclose()
    assert texts == ["Hello", "!"]
    assert end.usage == Usage(9, 2, 12, reported=True)  # $0.0000123 = 12.3 micro-USD
    assert end.finish_reason is FinishReason.STOP
    (request,) = stub.received
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {TEST_KEY}"
    assert request.headers["accept"] == "text/event-stream"
    assert request.body["stream"] is True and request.body["model"] == "gpt-4o-mini"


async def test_stub_openai_whole(stub: ProviderStub) -> None:
    stub.push(StubReply(body=OPENAI_WHOLE))
    c = await make("openai", stub.base_url)
    try:
        texts, end = await collect(c.stream(provider_call("gpt-4o-mini", stream=False)))
    finally:
        await c.aclose()
    assert texts == ["Hello there, how may I assist you today?"]
    assert end.usage == Usage(9, 12, None, reported=True)
    assert stub.received[0].body["stream"] is False
    assert "stream_options" not in stub.received[0].body


async def test_stub_a_stream_request_answered_whole_is_parsed(stub: ProviderStub) -> None:
    stub.push(StubReply(body=OPENAI_WHOLE))  # some compatible servers ignore "stream"
    c = await make("openai", stub.base_url)
    try:
        texts, end = await collect(c.stream(provider_call("gpt-4o-mini")))
    finally:
        await c.aclose()
    assert "".join(texts).startswith("Hello there") and end.usage.output_tokens == 12


async def test_stub_openrouter_error_mid_stream(stub: ProviderStub) -> None:
    stub.push(StubReply(sse=[
        data(openai_chunk("Partial")),
        data({"id": "gen-1", "object": "chat.completion.chunk", "created": 1,
              "model": "openai/gpt-4o",
              "error": {"code": 502, "message": "Provider disconnected unexpectedly"},
              "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}),
    ]))
    c = await make("openai", stub.base_url)
    try:
        texts, exc = await failure(c.stream(provider_call("openai/gpt-4o")))
    finally:
        await c.aclose()
    assert texts == ["Partial"]
    assert exc.status is AttemptStatus.TRANSIENT_ERROR and exc.usage.output_tokens == 1
    assert "Provider disconnected unexpectedly" in exc.message


async def test_stub_retry_after_as_an_http_date(stub: ProviderStub) -> None:
    stub.push(StubReply(429, {"error": {"message": "Rate limit reached", "type": "requests",
                                        "code": "rate_limit_exceeded"}},
                        headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)}))
    c = await make("openai", stub.base_url)
    try:
        _, exc = await failure(c.stream(provider_call("gpt-4o-mini")))
    finally:
        await c.aclose()
    assert exc.status is AttemptStatus.RATE_LIMITED
    assert exc.retry_after_s is not None and 25 <= exc.retry_after_s <= 30


async def test_stub_quota_exhausted_429_is_permanent(stub: ProviderStub) -> None:
    stub.push(StubReply(429, {"error": {"message": "You exceeded your current quota",
                                        "type": "insufficient_quota",
                                        "code": "insufficient_quota"}}))
    c = await make("openai", stub.base_url)
    try:
        _, exc = await failure(c.stream(provider_call("gpt-4o-mini")))
    finally:
        await c.aclose()
    assert exc.status is AttemptStatus.PERMANENT_ERROR and exc.http_status == 429


def anthropic_frame(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n"


async def test_stub_anthropic_streaming(stub: ProviderStub) -> None:
    stub.push(StubReply(sse=[
        anthropic_frame("message_start", {"type": "message_start", "message": {
            "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message",
            "role": "assistant", "content": [], "model": "claude-3-5-sonnet-20241022",
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        anthropic_frame("content_block_start", {"type": "content_block_start", "index": 0,
                                                "content_block": {"type": "text", "text": ""}}),
        anthropic_frame("ping", {"type": "ping"}),
        anthropic_frame("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "text_delta",
                                                          "text": "Hello"}}),
        anthropic_frame("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "text_delta", "text": "!"}}),
        anthropic_frame("content_block_stop", {"type": "content_block_stop", "index": 0}),
        anthropic_frame("message_delta", {"type": "message_delta",
                                          "delta": {"stop_reason": "end_turn",
                                                    "stop_sequence": None},
                                          "usage": {"output_tokens": 15}}),
        anthropic_frame("message_stop", {"type": "message_stop"}),
    ]))
    c = await make("anthropic", stub.base_url)
    try:
        texts, end = await collect(c.stream(provider_call("claude-3-5-sonnet-20241022")))
    finally:
        await c.aclose()
    assert texts == ["Hello", "!"] and end.usage == Usage(25, 15, None, reported=True)
    assert stub.received[0].path == "/v1/messages"
    assert stub.received[0].headers["x-api-key"] == TEST_KEY


# --- the in-process fake and the registry --------------------------------------------------

async def test_the_in_process_fake_matches_the_server(fake: FakeProviderServer) -> None:
    in_process = build_client(provider_settings("fake", name="demo"))
    assert isinstance(in_process, FakeProvider) and in_process.has_credentials()
    over_http = await make("openai", fake.base_url)
    try:
        for model in ("fake-ok", "fake-tokens-3-cost-70"):
            a_texts, a_end = await collect(in_process.stream(provider_call(model)))
            b_texts, b_end = await collect(over_http.stream(provider_call(model)))
            assert a_texts == b_texts and a_end == b_end
        for model in ("fake-503-2", "fake-401", "fake-429ms-300", "fake-cut-2",
                      "fake-error-event"):
            a_texts, a_exc = await failure(in_process.stream(provider_call(model)))
            b_texts, b_exc = await failure(over_http.stream(provider_call(model)))
            assert a_texts == b_texts
            assert (a_exc.status, a_exc.error_type, a_exc.http_status, a_exc.retry_after_s,
                    a_exc.usage.output_tokens) == (
                b_exc.status, b_exc.error_type, b_exc.http_status, b_exc.retry_after_s,
                b_exc.usage.output_tokens)
    finally:
        await over_http.aclose()
        await in_process.aclose()


async def test_the_in_process_fake_keeps_deadlines_and_flaky_counts() -> None:
    c = build_client(provider_settings("fake", first_token_timeout_s=0.05))
    _, exc = await failure(c.stream(provider_call("fake-slow-2000")))
    assert exc.error_type == "first_token_timeout"
    for expected_fail in (True, False):
        events = c.stream(provider_call("fake-flaky-1", stream=False))
        if expected_fail:
            assert (await failure(events))[1].http_status == 500
        else:
            texts, _ = await collect(events)
            assert texts == [expected_answer("fake-flaky-1")]
    _, bad = await failure(c.stream(provider_call("fake-nonsense")))
    assert bad.http_status == 400 and not bad.retryable


async def test_registry_builds_each_kind(fake: FakeProviderServer) -> None:
    settings = ExecutionSettings(providers={
        "openai": provider_settings("openai", base_url(kind="openai", root=fake.base_url)),
        "anthropic": provider_settings("anthropic", fake.base_url),
        "demo": provider_settings("fake", name="demo"),
        "nokey": provider_settings("openai", fake.base_url + "/v1", name="nokey",
                                   api_key_env="ABSENT_KEY"),
    })
    registry = ProviderRegistry.from_settings(settings, TEST_ENV)
    try:
        assert isinstance(registry.get("openai"), OpenAIProvider)
        assert isinstance(registry.get("anthropic"), AnthropicProvider)
        assert isinstance(registry.get("demo"), FakeProvider)
        assert registry.get("google") is None and not registry.has_credentials("google")
        assert registry.has_credentials("openai") and not registry.has_credentials("nokey")
        assert sorted(registry) == ["anthropic", "demo", "nokey", "openai"]
        for name in ("openai", "anthropic", "demo"):
            client = registry.get(name)
            assert client is not None and client.name == name
            await collect(client.stream(provider_call("fake-ok")))
    finally:
        await registry.aclose()
    assert ProviderKind.FAKE.value == "fake"


async def test_the_fake_records_over_http(fake: FakeProviderServer) -> None:
    c = await make("anthropic", fake.base_url)
    try:
        await collect(c.stream(provider_call("fake-ok")))
    finally:
        await c.aclose()
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        records = (await http.get("/_fake/requests")).json()
        assert [(r["path"], r["model"], r["finished"], r["disconnected"]) for r in records] == [
            ("/v1/messages", "fake-ok", True, False)]
        assert records[0]["headers"]["x-api-key"] == TEST_KEY
        assert records[0]["body"]["system"] == PROMPT[0].content
        assert (await http.delete("/_fake/requests")).status_code == 200
        assert (await http.get("/_fake/requests")).json() == []
    assert fake.requests() == ()
