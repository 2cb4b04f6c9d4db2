"""The two wire formats as the fake server writes them, with the errors each service sends.

OpenAI chat completions and Anthropic Messages, whole or as Server-Sent Events. Pure builders
of dicts and SSE frames; the server (fake_server.py) decides when to send them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from routing_sidecar.domain import MICROS_PER_USD
from routing_sidecar.providers import fake_script


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE frame (an `event:` line when given, one `data:` line, a blank line)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Answer:
    """What one request is answered with, and its exact usage."""

    request_id: str
    model: str
    tokens: tuple[str, ...]
    truncated: bool
    input_tokens: int
    cost_micros: int | None = None


def contents_of(wire: str, body: dict[str, Any]) -> list[str]:
    """The text of every message (and the system prompt) of a request body."""
    out: list[str] = []
    if wire == "anthropic":
        out.extend(_texts(body.get("system")))
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            out.extend(_texts(message.get("content")))
    return out


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):  # content blocks / parts
        return [p["text"] for p in content
                if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def max_tokens_of(body: dict[str, Any]) -> int | None:
    """The output token limit a request asked for."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


# --- OpenAI chat completions ---------------------------------------------------------------

def openai_error_body(status: int, message: str) -> dict[str, Any]:
    """An OpenAI error body for a status."""
    error_type, code = fake_script.openai_error(status)
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def openai_usage(a: Answer, sent: int) -> dict[str, Any]:
    """The usage object, with OpenRouter's `cost` (USD) when the script sets one."""
    usage: dict[str, Any] = {"prompt_tokens": a.input_tokens, "completion_tokens": sent,
                             "total_tokens": a.input_tokens + sent}
    if a.cost_micros is not None:
        usage["cost"] = a.cost_micros / MICROS_PER_USD
    return usage


def openai_whole(a: Answer) -> dict[str, Any]:
    """A non-streamed chat completion."""
    return {
        "id": a.request_id, "object": "chat.completion", "created": int(time.time()),
        "model": a.model,
        "choices": [{"index": 0, "finish_reason": "length" if a.truncated else "stop",
                     "message": {"role": "assistant", "content": "".join(a.tokens)}}],
        "usage": openai_usage(a, len(a.tokens)),
    }


def openai_chunk(a: Answer, delta: dict[str, Any], finish: str | None = None,
                 ) -> dict[str, Any]:
    """One chat.completion.chunk with a single choice."""
    return {"id": a.request_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": a.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def openai_tail(a: Answer, include_usage: bool) -> list[bytes]:
    """The frames after the last token: the finish chunk, the usage chunk, `[DONE]`."""
    frames = [sse(openai_chunk(a, {}, "length" if a.truncated else "stop"))]
    if include_usage:
        frames.append(sse({"id": a.request_id, "object": "chat.completion.chunk",
                           "created": int(time.time()), "model": a.model, "choices": [],
                           "usage": openai_usage(a, len(a.tokens))}))
    frames.append(sse("[DONE]"))
    return frames


def openai_stream_error() -> bytes:
    """An error object inside a 200 stream, as OpenAI sends it."""
    error_type, code = fake_script.STREAM_ERROR_OPENAI
    return sse({"error": {"message": "The server had an error while processing your request.",
                          "type": error_type, "param": None, "code": code}})


# --- Anthropic Messages --------------------------------------------------------------------

def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """An Anthropic error body for a status."""
    return {"type": "error", "error": {"type": fake_script.anthropic_error(status),
                                       "message": message}}


def _stop_reason(a: Answer) -> str:
    return "max_tokens" if a.truncated else "end_turn"


def anthropic_whole(a: Answer) -> dict[str, Any]:
    """A non-streamed message."""
    return {"id": a.request_id, "type": "message", "role": "assistant", "model": a.model,
            "content": [{"type": "text", "text": "".join(a.tokens)}],
            "stop_reason": _stop_reason(a), "stop_sequence": None,
            "usage": {"input_tokens": a.input_tokens, "output_tokens": len(a.tokens)}}


def anthropic_head(a: Answer) -> list[bytes]:
    """message_start, the text block's start, and a ping."""
    message: dict[str, Any] = {
        "id": a.request_id, "type": "message", "role": "assistant", "content": [],
        "model": a.model, "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": a.input_tokens, "output_tokens": 1},
    }
    return [
        sse({"type": "message_start", "message": message}, "message_start"),
        sse({"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}, "content_block_start"),
        anthropic_ping(),
    ]


def anthropic_ping() -> bytes:
    """A keep-alive ping event."""
    return sse({"type": "ping"}, "ping")


def anthropic_delta(text: str) -> bytes:
    """One text delta."""
    return sse({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": text}}, "content_block_delta")


def anthropic_tail(a: Answer) -> list[bytes]:
    """content_block_stop, message_delta (stop reason, output usage), message_stop."""
    return [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse({"type": "message_delta",
             "delta": {"stop_reason": _stop_reason(a), "stop_sequence": None},
             "usage": {"output_tokens": len(a.tokens)}}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    ]


def anthropic_stream_error() -> bytes:
    """An error event inside a 200 stream."""
    return sse({"type": "error", "error": {"type": fake_script.STREAM_ERROR_ANTHROPIC,
                                           "message": "Overloaded"}}, "error")
