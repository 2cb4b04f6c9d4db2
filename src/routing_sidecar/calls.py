"""Frozen types of one provider call: what is sent, what streams back, and how to reach it.

No pydantic, no I/O: config.py converts its provider models into `ProviderSettings`, and the
adapters in providers/ turn a `ProviderCall` into a stream of `TextDelta` events closed by one
`StreamEnd` (or a `ProviderError` from errors.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    """Who said a chat message."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class ResponseFormat(StrEnum):
    """The shape asked of the answer."""

    TEXT = "text"
    JSON_OBJECT = "json_object"


class FinishReason(StrEnum):
    """Why an answer ended, normalised across providers."""

    STOP = "stop"  # natural end or a stop sequence
    LENGTH = "length"  # the output token limit
    TOOL_CALLS = "tool_calls"
    OTHER = "other"  # anything else the provider said (or nothing)


class ProviderKind(StrEnum):
    """Which adapter speaks to a provider."""

    OPENAI = "openai"  # OpenAI chat completions and every compatible endpoint
    ANTHROPIC = "anthropic"  # the Anthropic Messages API
    FAKE = "fake"  # in process, scripted by the model name (providers/fake_script.py)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the conversation sent to the model."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class CallParams:
    """Parameters that change the answer (and therefore belong in a cache key)."""

    temperature: float | None = None
    stop: tuple[str, ...] = ()
    max_output_tokens: int | None = None
    response_format: ResponseFormat = ResponseFormat.TEXT


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """One attempt's request: which model, the conversation, and how to answer.

    `assistant_prefix` is the partial answer already delivered when a cut stream is resumed on
    another model: the adapter asks the model to continue it and streams only the new text.
    """

    model: str  # the catalog name (what budgets, health and the audit trail know)
    upstream_model: str  # the id sent to the provider
    messages: tuple[ChatMessage, ...]
    params: CallParams = CallParams()
    stream: bool = True
    assistant_prefix: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens (and the provider's own price, when it gives one) consumed by an attempt.

    `reported` is True when the provider stated the counts; False when they were counted from
    the stream (one token per content event) because the provider never said, e.g. a stream
    cut before its usage chunk. `input_tokens` is None when unknown.
    """

    input_tokens: int | None = None
    output_tokens: int = 0
    cost_micros: int | None = None
    reported: bool = False


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text; the first one to arrive is the attempt's first token."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of a successful attempt."""

    finish_reason: FinishReason
    usage: Usage
    raw_finish_reason: str = ""  # the provider's own word, for the audit trail


StreamEvent = TextDelta | StreamEnd


class Secret:
    """A credential that never shows itself in a repr, str, format or comparison output."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value; only the code putting it on the wire calls this."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __reduce__(self) -> tuple[object, ...]:  # never pickled into a cache or a queue
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """How to reach one provider; key sources are named here, the key itself is read later.

    `key_required` is False for a provider that takes no key (`kind: fake`, a loopback
    endpoint such as Ollama, or `api_key: none`); otherwise a provider whose key cannot be read
    has no credentials and is skipped in execute mode.
    """

    name: str
    kind: ProviderKind
    base_url: str = ""
    api_key_env: str | None = None
    api_key_file: str | None = None
    key_required: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 120.0
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 30.0  # streamed calls: request sent to first text delta
    max_connections: int = 20


@dataclass(frozen=True, slots=True)
class ExecutionSettings:
    """Everything execute mode needs from the config: providers and upstream model ids."""

    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    upstream_models: Mapping[str, str] = field(default_factory=dict)

    def upstream_model(self, model: str) -> str:
        """The id sent to the provider for a catalog model (its own name unless configured)."""
        return self.upstream_models.get(model, model)
