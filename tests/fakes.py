"""Shared fakes and helpers for the tests: real servers and real clients, never mocks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from routing_sidecar.calls import (
    CallParams,
    ChatMessage,
    ProviderCall,
    ProviderKind,
    ProviderSettings,
    Role,
    StreamEnd,
    StreamEvent,
    TextDelta,
)
from routing_sidecar.errors import ProviderError
from routing_sidecar.providers import fake_script

# --- provider calls (execute mode) ---------------------------------------------------------

TEST_KEY = "sk-test-9f8e7d6c5b4a39281706"
PROMPT = (ChatMessage(Role.SYSTEM, "You answer briefly."),
          ChatMessage(Role.USER, "Name a few things found near a river."))


def provider_settings(kind: str, base_url: str = "", name: str | None = None,
                      **overrides: Any) -> ProviderSettings:
    """Settings of a test provider whose key is TEST_KEY in the env variable TEST_PROVIDER_KEY."""
    fields: dict[str, Any] = {
        "name": name or kind, "kind": ProviderKind(kind), "base_url": base_url,
        "api_key_env": "TEST_PROVIDER_KEY", "key_required": kind != "fake",
        "timeout_s": 10.0, "connect_timeout_s": 2.0, "first_token_timeout_s": 5.0,
    }
    fields.update(overrides)
    return ProviderSettings(**fields)


TEST_ENV = {"TEST_PROVIDER_KEY": TEST_KEY}


def provider_call(upstream: str, stream: bool = True, **kw: Any) -> ProviderCall:
    """A call of the test prompt to an upstream (fake) model."""
    return ProviderCall(model="catalog-model", upstream_model=upstream,
                        messages=kw.pop("messages", PROMPT), stream=stream,
                        params=kw.pop("params", CallParams()), **kw)


def expected_answer(upstream: str, messages: tuple[ChatMessage, ...] = PROMPT,
                    max_tokens: int | None = None) -> str:
    """The text the fake answers for a model and prompt (its grammar is deterministic)."""
    script = fake_script.parse_model(upstream)
    contents = [m.content for m in messages]
    tokens, _ = fake_script.answer_tokens(fake_script.prompt_of(contents), script, max_tokens)
    return "".join(tokens)


def prompt_words(messages: tuple[ChatMessage, ...] = PROMPT) -> int:
    """Whitespace-separated words of the prompt, counted independently of the fake."""
    return sum(len(m.content.split()) for m in messages)


async def collect(events: AsyncIterator[StreamEvent]) -> tuple[list[str], StreamEnd]:
    """The text deltas of a successful stream and its end event (which must be last)."""
    texts: list[str] = []
    end: StreamEnd | None = None
    async for event in events:
        assert end is None, "an event arrived after StreamEnd"
        if isinstance(event, TextDelta):
            texts.append(event.text)
        else:
            end = event
    assert end is not None, "the stream ended without StreamEnd"
    return texts, end


async def failure(events: AsyncIterator[StreamEvent]) -> tuple[list[str], ProviderError]:
    """The text deltas of a stream that must fail, and its ProviderError."""
    texts: list[str] = []
    try:
        async for event in events:
            assert not isinstance(event, StreamEnd), "the stream succeeded"
            texts.append(event.text)
    except ProviderError as exc:
        return texts, exc
    raise AssertionError("the stream ended without an error")
