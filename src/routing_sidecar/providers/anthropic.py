"""The Anthropic Messages API.

POST {base_url}/v1/messages with `x-api-key` and `anthropic-version: 2023-06-01`. System
messages are lifted into `system`; `max_tokens` is required (the call's max output tokens, else
DEFAULT_MAX_TOKENS). Stream events: message_start (input usage), content_block_delta
(text_delta), message_delta (stop_reason, cumulative output usage), message_stop (the end),
error (classified: overloaded_error is transient), ping and the rest ignored. A resumed stream
is prefilled: the partial answer is the last, assistant, message, which the model continues.
"""

from __future__ import annotations

from typing import Any

from routing_sidecar.calls import (
    FinishReason,
    ProviderCall,
    ResponseFormat,
    Role,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)
from routing_sidecar.providers.base import (
    AttemptState,
    error_object,
    failure_from_error,
    finish,
    stream_cut,
)
from routing_sidecar.providers.http import HttpProvider, StreamParser, load_json

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
MAX_TEMPERATURE = 1.0  # Anthropic's range is 0..1 where OpenAI's is 0..2
JSON_INSTRUCTION = "Answer with a single JSON object and nothing else."
FINISH = {
    "end_turn": FinishReason.STOP, "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH, "tool_use": FinishReason.TOOL_CALLS,
}
REFUSED_STOP = frozenset({"refusal"})


def request_body(call: ProviderCall) -> dict[str, Any]:
    """The JSON body of a Messages request."""
    system = [m.content for m in call.messages if m.role is Role.SYSTEM]
    if call.params.response_format is ResponseFormat.JSON_OBJECT:
        system.append(JSON_INSTRUCTION)  # no JSON mode here: asked for in words instead
    messages: list[dict[str, str]] = [
        {"role": m.role.value, "content": m.content}
        for m in call.messages if m.role is not Role.SYSTEM
    ]
    if call.assistant_prefix.rstrip():
        # Prefill: the API refuses a final assistant turn ending in whitespace.
        messages.append({"role": "assistant", "content": call.assistant_prefix.rstrip()})
    p = call.params
    body: dict[str, Any] = {
        "model": call.upstream_model,
        "max_tokens": p.max_output_tokens or DEFAULT_MAX_TOKENS,
        "messages": messages,
        "stream": call.stream,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if p.temperature is not None:
        body["temperature"] = min(p.temperature, MAX_TEMPERATURE)
    if p.stop:
        body["stop_sequences"] = list(p.stop)
    return body


def input_tokens_of(usage: Any) -> int | None:
    """Input tokens of a usage object, cache reads and writes included (all were sent)."""
    if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
        return None
    extra = (usage.get(k) for k in ("cache_creation_input_tokens", "cache_read_input_tokens"))
    return int(usage["input_tokens"]) + sum(v for v in extra if isinstance(v, int))


def _finish(provider: str, raw: str | None, usage: Usage) -> StreamEnd:
    return finish(provider, raw, usage, FINISH, REFUSED_STOP)


class EventParser:
    """Messages stream events into text deltas and one StreamEnd."""

    def __init__(self, provider: str, state: AttemptState) -> None:
        self._provider = provider
        self._state = state
        self._stop_reason: str | None = None
        self._output_tokens: int | None = None
        self.done = False

    def feed(self, event: str, data: str) -> list[StreamEvent]:
        """The events of one SSE event."""
        if not data.strip():
            return []
        obj = load_json(self._provider, data)
        kind = obj.get("type", event) if isinstance(obj, dict) else event
        if kind == "error" or event == "error":
            err = error_object(obj)
            if err is None:
                raise stream_cut(self._provider, "an error event without an error object")
            raise failure_from_error(self._provider, err, None)
        if not isinstance(obj, dict):
            return []
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self._state.input_tokens = input_tokens_of(message.get("usage"))
        elif kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    return [TextDelta(text)]
        elif kind == "message_delta":
            self._message_delta(obj)
        elif kind == "message_stop":
            self.done = True
            return [self._end()]
        return []  # ping, content_block_start/stop, and event types added later

    def _message_delta(self, obj: dict[str, Any]) -> None:
        delta = obj.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason"):
            self._stop_reason = str(delta["stop_reason"])
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("output_tokens"), int):
                self._output_tokens = int(usage["output_tokens"])  # cumulative, not a delta
            if input_tokens_of(usage) is not None:
                self._state.input_tokens = input_tokens_of(usage)

    def at_eof(self) -> list[StreamEvent]:
        """The body ended without message_stop: the answer was cut."""
        raise stream_cut(self._provider, "the stream ended before message_stop")

    def _end(self) -> StreamEnd:
        if self._output_tokens is not None and self._state.input_tokens is not None:
            usage = Usage(self._state.input_tokens, self._output_tokens, None, reported=True)
        else:
            usage = Usage(self._state.input_tokens, self._state.output_tokens, None, False)
        return _finish(self._provider, self._stop_reason, usage)


def parse_response(provider: str, body: Any, state: AttemptState) -> list[StreamEvent]:
    """A whole (non-streamed) message: its text blocks as one delta, then the end."""
    err = error_object(body)
    if err is not None:
        raise failure_from_error(provider, err, None)
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise stream_cut(provider, "the response has no content")
    text = "".join(
        b["text"] for b in body["content"]
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )
    raw_usage = body.get("usage")
    state.input_tokens = input_tokens_of(raw_usage)
    out: list[StreamEvent] = [TextDelta(text)] if text else []
    output = raw_usage.get("output_tokens") if isinstance(raw_usage, dict) else None
    if isinstance(output, int) and state.input_tokens is not None:
        usage = Usage(state.input_tokens, output, None, reported=True)
    else:
        usage = Usage(state.input_tokens, len(out), None, False)
    out.append(_finish(provider, body.get("stop_reason"), usage))
    return out


class AnthropicProvider(HttpProvider):
    """The Anthropic Messages API."""

    path = "v1/messages"

    def _auth_headers(self) -> dict[str, str]:
        # A configured anthropic-version (or anthropic-beta) header wins over the default.
        configured = {k.lower() for k in self._settings.headers}
        headers = {} if "anthropic-version" in configured else {"anthropic-version": API_VERSION}
        if self._key is not None:
            headers["x-api-key"] = self._key.reveal()
        return headers

    def _body(self, call: ProviderCall) -> dict[str, Any]:
        return request_body(call)

    def _stream_parser(self, call: ProviderCall, state: AttemptState) -> StreamParser:
        return EventParser(self.name, state)

    def _parse_whole(self, body: Any, state: AttemptState) -> list[StreamEvent]:
        return parse_response(self.name, body, state)
