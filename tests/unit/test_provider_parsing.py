"""Wire formats without a network: request bodies, stream and whole-response parsers, error
objects, Retry-After, safe error text, secrets, and the fake provider's grammar."""

from __future__ import annotations

import json
import pickle
from email.utils import formatdate
from typing import Any

import pytest

from routing_sidecar.calls import (
    CallParams,
    ChatMessage,
    FinishReason,
    ProviderCall,
    ResponseFormat,
    Role,
    Secret,
    StreamEnd,
    TextDelta,
    Usage,
)
from routing_sidecar.domain import AttemptStatus
from routing_sidecar.errors import ProviderError, RoutingError
from routing_sidecar.providers import anthropic, fake_script, openai
from routing_sidecar.providers.base import (
    AttemptState,
    error_object,
    failure_from_error,
    parse_retry_after,
    safe_text,
)

MESSAGES = (ChatMessage(Role.SYSTEM, "You are terse."), ChatMessage(Role.USER, "Say hi"))


def call(**kw: Any) -> ProviderCall:
    base: dict[str, Any] = {"model": "cat-model", "upstream_model": "up-model",
                            "messages": MESSAGES}
    base.update(kw)
    return ProviderCall(**base)


def feed_openai(lines: list[Any]) -> tuple[list[Any], AttemptState]:
    state = AttemptState()
    parser = openai.ChunkParser("p", state)
    out: list[Any] = []
    for line in lines:
        data = line if isinstance(line, str) else json.dumps(line)
        for ev in parser.feed("message", data):
            if isinstance(ev, TextDelta):
                state.output_tokens += 1  # what timed_events does as deltas pass
            out.append(ev)
    return out, state


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


# --- OpenAI --------------------------------------------------------------------------------

def test_openai_request_body_streaming() -> None:
    body = openai.request_body(call(params=CallParams(
        temperature=0.0, stop=("END",), max_output_tokens=50,
        response_format=ResponseFormat.JSON_OBJECT)))
    assert body == {
        "model": "up-model",
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "Say hi"}],
        "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0.0, "stop": ["END"], "max_tokens": 50,
        "response_format": {"type": "json_object"},
    }


def test_openai_request_body_whole_and_max_completion_tokens() -> None:
    body = openai.request_body(call(stream=False, params=CallParams(max_output_tokens=9)),
                               "max_completion_tokens")
    assert body["stream"] is False
    assert "stream_options" not in body and "temperature" not in body
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body


def test_openai_request_body_resume_appends_prefix_and_asks_to_continue() -> None:
    body = openai.request_body(call(assistant_prefix="Hello, wor"))
    assert body["messages"][-2] == {"role": "assistant", "content": "Hello, wor"}
    assert body["messages"][-1] == {"role": "user", "content": openai.CONTINUE_PROMPT}


def test_openai_stream_with_usage_chunk() -> None:
    events, state = feed_openai([
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                      "finish_reason": None}], "usage": None},
        chunk("Hel", usage=None), chunk("lo", usage=None), chunk(None, "stop", usage=None),
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2,
                                  "total_tokens": 13}},
        "[DONE]",
    ])
    assert events == [
        TextDelta("Hel"), TextDelta("lo"),
        StreamEnd(FinishReason.STOP, Usage(11, 2, None, reported=True), "stop"),
    ]
    assert state.input_tokens == 11


def test_openrouter_cost_becomes_micros() -> None:
    events, _ = feed_openai([
        chunk("x"), chunk(None, "stop"),
        {"choices": [], "usage": {"prompt_tokens": 194, "completion_tokens": 2,
                                  "total_tokens": 196, "cost": 0.00095,
                                  "cost_details": {"upstream_inference_cost": 19}}},
        "[DONE]",
    ])
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.usage == Usage(194, 2, 950, reported=True)


@pytest.mark.parametrize("cost", [True, -1.0, "0.1", float("nan"), None])
def test_unusable_cost_is_ignored(cost: Any) -> None:
    usage = openai.usage_of({"prompt_tokens": 1, "completion_tokens": 2, "cost": cost})
    assert usage == Usage(1, 2, None, reported=True)


def test_openai_stream_without_usage_counts_deltas() -> None:
    events, _ = feed_openai([chunk("a"), chunk("b"), chunk("c", "length"), "[DONE]"])
    assert events[-1] == StreamEnd(FinishReason.LENGTH, Usage(None, 3, None, False), "length")


def test_openai_stream_without_done_after_a_finish_reason_ends() -> None:
    state = AttemptState()
    parser = openai.ChunkParser("p", state)
    parser.feed("message", json.dumps(chunk("a", "stop")))
    end = parser.at_eof()
    assert end[0] == StreamEnd(FinishReason.STOP, Usage(None, 0, None, False), "stop")


def test_openai_stream_cut_before_finish_is_a_transient_stream_error() -> None:
    parser = openai.ChunkParser("p", AttemptState())
    parser.feed("message", json.dumps(chunk("a")))
    with pytest.raises(ProviderError) as info:
        parser.at_eof()
    assert (info.value.status, info.value.error_type) == (
        AttemptStatus.TRANSIENT_ERROR, "stream_error")


@pytest.mark.parametrize(("payload", "status", "error_type"), [
    # OpenAI: an error object in a 200 stream
    ({"error": {"message": "The server had an error", "type": "server_error", "param": None,
                "code": None}}, AttemptStatus.TRANSIENT_ERROR, "server_error"),
    # OpenRouter: numeric code (the HTTP status it would have been) and finish_reason error
    ({"id": "gen-1", "object": "chat.completion.chunk",
      "error": {"code": 502, "message": "Provider disconnected"},
      "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]},
     AttemptStatus.TRANSIENT_ERROR, "stream_error"),
    ({"error": {"code": 429, "message": "slow down"}}, AttemptStatus.RATE_LIMITED,
     "stream_error"),
    ({"error": {"type": "invalid_request_error", "code": "context_length_exceeded",
                "message": "too long"}}, AttemptStatus.PERMANENT_ERROR,
     "context_length_exceeded"),
])
def test_openai_error_in_stream(payload: dict[str, Any], status: AttemptStatus,
                                error_type: str) -> None:
    with pytest.raises(ProviderError) as info:
        feed_openai([chunk("partial"), payload])
    assert (info.value.status, info.value.error_type) == (status, error_type)
    assert info.value.http_status is None


def test_openai_content_filter_finish_is_a_refusal() -> None:
    with pytest.raises(ProviderError) as info:
        feed_openai([chunk("I can"), chunk(None, "content_filter"), "[DONE]"])
    err = info.value
    assert (err.status, err.error_type) == (AttemptStatus.PERMANENT_ERROR, "content_refused")
    assert err.usage.output_tokens == 1


def test_openai_refusal_field_is_a_refusal() -> None:
    with pytest.raises(ProviderError) as info:
        feed_openai([{"choices": [{"index": 0, "delta": {"refusal": "I can't help"},
                                   "finish_reason": None}]}])
    assert info.value.error_type == "content_refused"
    with pytest.raises(ProviderError):
        openai.parse_response("p", {"choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": None,
                                                             "refusal": "No."}}]},
                              AttemptState())


def test_openai_unparseable_chunk_is_a_bad_response() -> None:
    with pytest.raises(ProviderError) as info:
        feed_openai(["{not json"])
    assert info.value.error_type == "bad_response" and info.value.retryable


def test_openai_whole_response() -> None:
    state = AttemptState()
    events = openai.parse_response("p", {
        "id": "chatcmpl-1", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }, state)
    assert events == [TextDelta("Hi there"),
                      StreamEnd(FinishReason.STOP, Usage(9, 2, None, True), "stop")]


def test_openai_whole_response_with_error_object() -> None:
    with pytest.raises(ProviderError) as info:
        openai.parse_response("p", {"error": {"type": "server_error", "message": "x"}},
                              AttemptState())
    assert info.value.status is AttemptStatus.TRANSIENT_ERROR


# --- Anthropic -----------------------------------------------------------------------------

def test_anthropic_request_body() -> None:
    body = anthropic.request_body(call(
        messages=(*MESSAGES, ChatMessage(Role.SYSTEM, "Use English.")),
        params=CallParams(temperature=1.7, stop=("\n\nHuman:",),
                          response_format=ResponseFormat.JSON_OBJECT),
        assistant_prefix="Hello, wor  "))
    assert body == {
        "model": "up-model", "max_tokens": anthropic.DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "Say hi"},
                     {"role": "assistant", "content": "Hello, wor"}],
        "stream": True,
        "system": f"You are terse.\n\nUse English.\n\n{anthropic.JSON_INSTRUCTION}",
        "temperature": 1.0, "stop_sequences": ["\n\nHuman:"],
    }


def test_anthropic_request_uses_the_calls_max_tokens() -> None:
    body = anthropic.request_body(call(messages=MESSAGES[1:],
                                       params=CallParams(max_output_tokens=77), stream=False))
    assert body["max_tokens"] == 77 and "system" not in body and body["stream"] is False


def anthropic_events() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "model": "claude", "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 25, "cache_creation_input_tokens": 3,
                      "cache_read_input_tokens": 2, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hello"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "!"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 15}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def feed_anthropic(events: list[tuple[str, dict[str, Any]]]) -> tuple[list[Any], AttemptState]:
    state = AttemptState()
    parser = anthropic.EventParser("p", state)
    out: list[Any] = []
    for name, data in events:
        for ev in parser.feed(name, json.dumps(data)):
            if isinstance(ev, TextDelta):
                state.output_tokens += 1
            out.append(ev)
    return out, state


def test_anthropic_stream() -> None:
    events, state = feed_anthropic(anthropic_events())
    assert events == [
        TextDelta("Hello"), TextDelta("!"),
        StreamEnd(FinishReason.STOP, Usage(30, 15, None, reported=True), "end_turn"),
    ]
    assert state.input_tokens == 30  # cache reads and writes were sent too


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("max_tokens", FinishReason.LENGTH), ("stop_sequence", FinishReason.STOP),
    ("tool_use", FinishReason.TOOL_CALLS), ("pause_turn", FinishReason.OTHER),
])
def test_anthropic_stop_reasons(stop_reason: str, finish: FinishReason) -> None:
    events = anthropic_events()
    events[6][1]["delta"]["stop_reason"] = stop_reason
    out, _ = feed_anthropic(events)
    assert out[-1].finish_reason is finish and out[-1].raw_finish_reason == stop_reason


def test_anthropic_refusal_is_permanent() -> None:
    events = anthropic_events()
    events[6][1]["delta"]["stop_reason"] = "refusal"
    with pytest.raises(ProviderError) as info:
        feed_anthropic(events)
    assert info.value.error_type == "content_refused" and not info.value.retryable


@pytest.mark.parametrize(("error_type", "status"), [
    ("overloaded_error", AttemptStatus.TRANSIENT_ERROR),
    ("api_error", AttemptStatus.TRANSIENT_ERROR),
    ("rate_limit_error", AttemptStatus.RATE_LIMITED),
    ("invalid_request_error", AttemptStatus.PERMANENT_ERROR),
])
def test_anthropic_error_event(error_type: str, status: AttemptStatus) -> None:
    error = {"type": "error", "error": {"type": error_type, "message": "Overloaded"}}
    events = [*anthropic_events()[:4], ("error", error)]
    with pytest.raises(ProviderError) as info:
        feed_anthropic(events)
    assert (info.value.status, info.value.error_type) == (status, error_type)


def test_anthropic_eof_before_message_stop_is_cut() -> None:
    state = AttemptState()
    parser = anthropic.EventParser("p", state)
    for name, data in anthropic_events()[:4]:
        parser.feed(name, json.dumps(data))
    with pytest.raises(ProviderError) as info:
        parser.at_eof()
    assert info.value.error_type == "stream_error" and state.input_tokens == 30


def test_anthropic_unknown_events_are_ignored() -> None:
    events = anthropic_events()
    events.insert(4, ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                              "delta": {"type": "input_json_delta",
                                                        "partial_json": "{"}}))
    events.insert(2, ("brand_new", {"type": "brand_new", "x": 1}))
    out, _ = feed_anthropic(events)
    assert [e.text for e in out if isinstance(e, TextDelta)] == ["Hello", "!"]


def test_anthropic_whole_response() -> None:
    events = anthropic.parse_response("p", {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "t"},
                    {"type": "text", "text": " there"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 3},
    }, AttemptState())
    assert events == [TextDelta("Hi there"),
                      StreamEnd(FinishReason.STOP, Usage(10, 3, None, True), "end_turn")]


def test_anthropic_whole_error_body() -> None:
    with pytest.raises(ProviderError) as info:
        anthropic.parse_response("p", {"type": "error", "error": {
            "type": "overloaded_error", "message": "Overloaded"}}, AttemptState())
    assert info.value.status is AttemptStatus.TRANSIENT_ERROR


# --- shared pieces -------------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after": "2"}, 2.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # the precise one wins
    ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
    ({"retry-after": formatdate(NOW + 30, usegmt=True)}, 30.0),
    ({"retry-after": formatdate(NOW - 30, usegmt=True)}, 0.0),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "-3"}, None),
    ({"retry-after": "inf"}, None),
    ({"retry-after": "99999999"}, 86_400.0),
    ({}, None),
])
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, NOW) == expected


def test_safe_text_redacts_keys_and_look_alikes() -> None:
    key = Secret("sk-live-0123456789abcdef")
    text = ("Incorrect API key provided: sk-live-0123456789abcdef. Also sk-abc***wxyz and "
            "Bearer tok_123456 and the key itself again sk-live-0123456789abcdef")
    safe = safe_text(text, key)
    assert "0123456789abcdef" not in safe and "***" not in safe and "tok_123456" not in safe
    assert "Incorrect API key provided" in safe


def test_safe_text_is_short_and_on_one_line() -> None:
    safe = safe_text("line one\nline two " + "x" * 500)
    assert "\n" not in safe and len(safe) <= 200 and safe.endswith("…")


@pytest.mark.parametrize(("body", "code", "numeric"), [
    # the more specific code wins when it is known, else the type
    ({"error": {"type": "invalid_request_error", "code": "invalid_api_key", "message": "m"}},
     "invalid_api_key", None),
    ({"error": {"type": "invalid_request_error", "code": "unsupported_region"}},
     "invalid_request_error", None),
    ({"error": {"type": "tokens", "code": "rate_limit_exceeded"}}, "rate_limit_exceeded", None),
    ({"error": {"type": "brand_new"}}, "brand_new", None),
    ({"error": {"code": 503, "message": "m"}}, None, 503),
    ({"error": "plain words"}, None, None),
    ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
     "overloaded_error", None),
])
def test_error_object(body: dict[str, Any], code: str | None, numeric: int | None) -> None:
    err = error_object(body)
    assert err is not None and (err.code, err.http_status) == (code, numeric)


@pytest.mark.parametrize("body", [{"choices": []}, {"error": None}, [], "x", None])
def test_no_error_object(body: Any) -> None:
    assert error_object(body) is None


def test_failure_message_of_a_401_never_repeats_the_providers_text() -> None:
    err = error_object({"error": {"type": "authentication_error",
                                  "message": "invalid x-api-key sk-ant-abcdef123456"}})
    assert err is not None
    exc = failure_from_error("anthropic", err, Secret("sk-ant-abcdef123456"), http_status=401)
    assert exc.message == "anthropic: HTTP 401 (authentication_error)"
    assert exc.error_type == "http_401" and not exc.retryable


def test_secret_hides_itself() -> None:
    s = Secret("sk-very-secret")
    for shown in (repr(s), str(s), f"{s}", f"{s!r}", repr([s]), repr({"k": s})):
        assert "very-secret" not in shown
    assert s.reveal() == "sk-very-secret"
    with pytest.raises(TypeError):
        pickle.dumps(s)


@pytest.mark.parametrize(("status", "retryable"), [
    (AttemptStatus.TRANSIENT_ERROR, True), (AttemptStatus.TIMEOUT, True),
    (AttemptStatus.RATE_LIMITED, True), (AttemptStatus.PERMANENT_ERROR, False),
])
def test_provider_error_is_retryable_per_status(status: AttemptStatus, retryable: bool) -> None:
    exc = ProviderError("p: x", status=status, error_type="t")
    assert isinstance(exc, RoutingError) and exc.retryable is retryable
    carried = exc.with_usage(Usage(5, 2))
    assert carried.usage == Usage(5, 2) and carried.status is status


def test_provider_error_is_never_success() -> None:
    with pytest.raises(ValueError, match="SUCCESS"):
        ProviderError("p", status=AttemptStatus.SUCCESS, error_type="x")


# --- the fake's grammar --------------------------------------------------------------------

S = fake_script.Script


@pytest.mark.parametrize(("name", "script"), [
    ("fake", S()), ("fake-ok", S()), ("gpt-5-mini", S()), ("fakeish-429", S()),
    ("fake-slow-300", S(first_token_delay_s=0.3)),
    ("fake-tps-50", S(tokens_per_s=50.0)),
    ("fake-tokens-3", S(tokens=3)),
    ("fake-cost-1500", S(cost_micros=1500)),
    ("fake-500", S(http_status=500)),
    ("fake-429-2", S(http_status=429, retry_after_s=2)),
    ("fake-429ms-1500", S(http_status=429, retry_after_ms=1500)),
    ("fake-cut-2", S(cut_after=2)),
    ("fake-flaky-2", S(flaky=2)),
    ("fake-flaky-2-503", S(flaky=2, http_status=503)),
    ("fake-error-event", S(error_event=True)),
    ("fake-cut-3-error-event-tps-20", S(cut_after=3, error_event=True, tokens_per_s=20.0)),
])
def test_parse_model(name: str, script: fake_script.Script) -> None:
    assert fake_script.parse_model(name) == script


@pytest.mark.parametrize(("name", "problem"), [
    ("fake-bogus", "unknown directive 'bogus'"),
    ("fake-slow", "slow needs a number"),
    ("fake-tps-x", "tps needs a number"),
    ("fake-200", "unknown directive '200'"),
    ("fake-429ms", "429ms needs a number"),
    ("fake-slow-9999999", "above"),
    ("fake-error", "unknown directive 'error'"),
])
def test_parse_model_refuses_malformed_names(name: str, problem: str) -> None:
    with pytest.raises(fake_script.ScriptError, match=problem):
        fake_script.parse_model(name)


def test_flaky_fails_only_the_first_requests() -> None:
    s = fake_script.parse_model("fake-flaky-2-429-1")
    assert [s.failure_for(n) for n in (1, 2, 3, 4)] == [429, 429, None, None]
    assert [fake_script.parse_model("fake-flaky-1").failure_for(n) for n in (1, 2)] == [500, None]


def test_answer_is_deterministic_and_sized_by_the_script() -> None:
    a, _ = fake_script.answer_tokens("hello", S())
    b, _ = fake_script.answer_tokens("hello", S())
    c, _ = fake_script.answer_tokens("goodbye", S(tokens=40))
    assert a == b and 8 <= len(a) <= 16
    assert len(c) == 40 and c[0][0] != " " and all(t.startswith(" ") for t in c[1:])
    cut, truncated = fake_script.answer_tokens("hello", S(tokens=10), max_tokens=4)
    assert len(cut) == 4 and truncated
    assert fake_script.count_tokens(["one two", "three"]) == 3
