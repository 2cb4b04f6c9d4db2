"""OpenAI chat completions and every endpoint speaking it.

That is OpenAI, OpenRouter, DeepSeek, xAI, Together, Groq, vLLM, Ollama and LM Studio.
POST {base_url}/chat/completions with `Authorization: Bearer`. Streaming asks for
`stream_options: {include_usage: true}` and takes the usage from the final chunk (empty
`choices`); SSE comments (`: OPENROUTER PROCESSING`) are skipped by the SSE parser; `[DONE]`
ends the stream; an `error` object inside a 200 stream is a failed attempt classified by its
code or type; OpenRouter's `usage.cost` (USD) becomes the attempt's actual cost.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from routing_sidecar.calls import (
    FinishReason,
    ProviderCall,
    ResponseFormat,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)
from routing_sidecar.domain import MICROS_PER_USD
from routing_sidecar.providers.base import (
    AttemptState,
    error_object,
    failure_from_error,
    finish,
    refused,
    stream_cut,
)
from routing_sidecar.providers.http import HttpProvider, StreamParser, load_json

# What a resumed stream asks of a model that cannot be prefilled: carry on, do not restart.
CONTINUE_PROMPT = (
    "Continue your previous answer exactly where it stops. Do not repeat any of it and do not "
    "comment on the continuation."
)
FINISH = {
    "stop": FinishReason.STOP, "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS, "function_call": FinishReason.TOOL_CALLS,
}
REFUSED_FINISH = frozenset({"content_filter"})  # and a `refusal` field (structured outputs)
# OpenAI's own API wants max_completion_tokens (max_tokens is refused by its reasoning models);
# compatible servers still read max_tokens.
OPENAI_HOSTS = frozenset({"api.openai.com"})


def request_body(call: ProviderCall, max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    """The JSON body of a chat completions request."""
    messages: list[dict[str, str]] = [
        {"role": m.role.value, "content": m.content} for m in call.messages
    ]
    if call.assistant_prefix:
        messages.append({"role": "assistant", "content": call.assistant_prefix})
        messages.append({"role": "user", "content": CONTINUE_PROMPT})
    body: dict[str, Any] = {"model": call.upstream_model, "messages": messages,
                            "stream": call.stream}
    if call.stream:
        body["stream_options"] = {"include_usage": True}
    p = call.params
    if p.temperature is not None:
        body["temperature"] = p.temperature
    if p.stop:
        body["stop"] = list(p.stop)
    if p.max_output_tokens is not None:
        body[max_tokens_field] = p.max_output_tokens
    if p.response_format is ResponseFormat.JSON_OBJECT:
        body["response_format"] = {"type": "json_object"}
    return body


def usage_of(raw: Any) -> Usage | None:
    """A reported usage object: prompt/completion tokens and OpenRouter's `cost` in USD."""
    if not isinstance(raw, dict):
        return None
    cost = raw.get("cost")
    cost_micros = (
        round(cost * MICROS_PER_USD)
        if isinstance(cost, int | float) and not isinstance(cost, bool)
        and math.isfinite(cost) and cost >= 0 else None
    )
    return Usage(_count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens")) or 0,
                 cost_micros, reported=True)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def _finish(provider: str, raw: str | None, usage: Usage) -> StreamEnd:
    return finish(provider, raw, usage, FINISH, REFUSED_FINISH)


class ChunkParser:
    """Chat completion chunks (`data: {...}` lines) into text deltas and one StreamEnd."""

    def __init__(self, provider: str, state: AttemptState) -> None:
        self._provider = provider
        self._state = state
        self._finish_reason: str | None = None
        self._usage: Usage | None = None
        self.done = False

    def feed(self, event: str, data: str) -> list[StreamEvent]:
        """The events of one SSE data line."""
        if not data.strip():
            return []
        if data.strip() == "[DONE]":
            self.done = True
            return [self._end()]
        chunk = load_json(self._provider, data)
        err = error_object(chunk)
        if err is not None:
            raise failure_from_error(self._provider, err, None)
        if not isinstance(chunk, dict):
            return []
        usage = usage_of(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
            self._state.input_tokens = usage.input_tokens
        out: list[StreamEvent] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n > 1 is never asked for; only the first choice is the answer
            delta = choice.get("delta") or {}
            if isinstance(delta, dict) and delta.get("refusal"):
                raise refused(self._provider)
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                out.append(TextDelta(text))
            if choice.get("finish_reason"):
                self._finish_reason = str(choice["finish_reason"])
        return out

    def at_eof(self) -> list[StreamEvent]:
        """No `[DONE]`: fine after a finish reason (some servers omit it), else a cut stream."""
        if self._finish_reason is None:
            raise stream_cut(self._provider, "the stream ended before the answer did")
        self.done = True
        return [self._end()]

    def _end(self) -> StreamEnd:
        usage = self._usage or self._state.usage()
        if not usage.reported:
            usage = Usage(usage.input_tokens, self._state.output_tokens, None, False)
        return _finish(self._provider, self._finish_reason, usage)


def parse_response(provider: str, body: Any, state: AttemptState) -> list[StreamEvent]:
    """A whole (non-streamed) chat completion: its text as one delta, then the end."""
    err = error_object(body)
    if err is not None:
        raise failure_from_error(provider, err, None)
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise stream_cut(provider, "the response has no choices")
    message = choices[0].get("message") or {}
    if isinstance(message, dict) and message.get("refusal"):
        raise refused(provider)
    text = message.get("content") if isinstance(message, dict) else None
    usage = usage_of(body.get("usage"))
    if usage is not None:
        state.input_tokens = usage.input_tokens
    out: list[StreamEvent] = [TextDelta(text)] if isinstance(text, str) and text else []
    end_usage = usage or Usage(None, len(out), None, False)
    out.append(_finish(provider, choices[0].get("finish_reason"), end_usage))
    return out


class OpenAIProvider(HttpProvider):
    """An OpenAI-compatible chat completions endpoint."""

    path = "chat/completions"

    def _auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._key.reveal()}"} if self._key is not None else {}

    def _body(self, call: ProviderCall) -> dict[str, Any]:
        host = urlsplit(self._settings.base_url).hostname or ""
        field = "max_completion_tokens" if host in OPENAI_HOSTS else "max_tokens"
        return request_body(call, field)

    def _stream_parser(self, call: ProviderCall, state: AttemptState) -> StreamParser:
        return ChunkParser(self.name, state)

    def _parse_whole(self, body: Any, state: AttemptState) -> list[StreamEvent]:
        return parse_response(self.name, body, state)
