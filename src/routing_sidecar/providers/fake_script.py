"""The fake provider's script language: behaviour chosen by the requested model name.

Shared by the bundled fake server (fake_server.py, both wire formats) and the in-process
`kind: fake` client (fake.py), so a script behaves the same over HTTP and in process.

A fake model name is `fake` followed by `-`-separated directives, in any order:

    ok            answer normally (the default: `fake` alone means the same)
    slow-MS       the first token after MS milliseconds (keep-alive comments / pings meanwhile)
    tps-N         pace the tokens at N per second
    tokens-N      answer N tokens (default: 8 to 16, derived from the prompt)
    cost-N        report a provider cost of N micro-USD (`usage.cost`, as OpenRouter does)
    NNN           fail with HTTP status NNN (400-599): 500, 503, 529, 401, 400, 404, ...
    NNN-S         ... with `Retry-After: S` (seconds), e.g. 429-2
    NNNms-M       ... with `retry-after-ms: M`, e.g. 429ms-1500
    flaky-N       only the first N requests for this exact name fail (with HTTP 500, or the
                  status given); later ones answer
    cut-N         the stream stops after N tokens: the connection drops mid-body
    error-event   an error object inside the 200 stream (after the cut-N tokens, else at once)

Examples: `fake-tps-50`, `fake-429-2`, `fake-flaky-2-503`, `fake-cut-2`, `fake-cost-1500`.
Any name not starting with `fake` (a catalog name such as gpt-5-mini) answers normally, so a
config can point at the fake without setting upstream_model; a `fake-...` name that does not
parse is refused with HTTP 400 naming the directive.

The answer is deterministic: words picked by hashing the prompt, one word per token (the first
without, the others with, a leading space). Token counts are exact in the fake's own measure:
input tokens are the whitespace-separated words of every message, output tokens the words sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

VOCAB = (
    "amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor",
    "iris", "juniper", "kelp", "lagoon", "meadow", "nectar", "orchid", "pebble",
    "quartz", "river", "saffron", "tundra", "umber", "valley", "willow", "xenon",
    "yarrow", "zephyr", "aspen", "basalt", "coral", "dune", "estuary", "fern",
)
MAX_DELAY_MS = 600_000
MAX_TOKENS = 100_000

# Error bodies per wire format: OpenAI (type, code) and Anthropic error.type, as the real
# services send them for each status.
OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}
ANTHROPIC_ERRORS: dict[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 529: "overloaded_error",
}
STREAM_ERROR_OPENAI = ("server_error", None)
STREAM_ERROR_ANTHROPIC = "overloaded_error"


class ScriptError(ValueError):
    """A `fake-...` model name that does not parse; the message names the directive."""


@dataclass(frozen=True, slots=True)
class Script:
    """What a fake model does with a request."""

    first_token_delay_s: float = 0.0
    tokens_per_s: float | None = None
    tokens: int | None = None
    cost_micros: int | None = None
    http_status: int | None = None
    retry_after_s: int | None = None
    retry_after_ms: int | None = None
    flaky: int = 0
    cut_after: int | None = None
    error_event: bool = False

    def tokens_before_end(self, answer_length: int) -> int:
        """Tokens streamed before a cut or an error event (all of them when neither)."""
        if self.cut_after is not None:
            return min(self.cut_after, answer_length)
        return 0 if self.error_event else answer_length

    def failure_for(self, nth_request: int) -> int | None:
        """The HTTP status the `nth_request` (1-based) for this name fails with, or None."""
        if self.flaky:
            return (self.http_status or 500) if nth_request <= self.flaky else None
        return self.http_status


def _number(name: str, words: list[str], i: int, directive: str, upper: int) -> int:
    if i >= len(words) or not words[i].isdigit():
        raise ScriptError(f"{name}: {directive} needs a number after it")
    value = int(words[i])
    if value > upper:
        raise ScriptError(f"{name}: {directive}-{value} is above {upper}")
    return value


def parse_model(name: str) -> Script:
    """The script of a model name; raises ScriptError for a `fake-...` name that is malformed."""
    words = name.split("-")
    if words[0] != "fake":
        return Script()
    script, i = Script(), 1
    while i < len(words):
        word = words[i]
        if word == "ok":
            i += 1
            continue
        if word == "error" and i + 1 < len(words) and words[i + 1] == "event":
            script, i = replace(script, error_event=True), i + 2
            continue
        script, i = _directive(name, words, i, script)
    return script


# Directives taking a number: (upper bound, Script field, the field's value from the number).
_NUMERIC: dict[str, tuple[int, str, Callable[[int], Any]]] = {
    "slow": (MAX_DELAY_MS, "first_token_delay_s", lambda n: n / 1000),
    "tps": (10_000, "tokens_per_s", lambda n: float(max(n, 1))),
    "tokens": (MAX_TOKENS, "tokens", int),
    "cost": (10**9, "cost_micros", int),
    "flaky": (1000, "flaky", int),
    "cut": (MAX_TOKENS, "cut_after", int),
}


def _directive(name: str, words: list[str], i: int, script: Script) -> tuple[Script, int]:
    word = words[i]
    if word in _NUMERIC:
        upper, field, convert = _NUMERIC[word]
        n = _number(name, words, i + 1, word, upper)
        return replace(script, **{field: convert(n)}), i + 2
    status_word = word.removesuffix("ms")
    if status_word.isdigit() and len(status_word) == 3 and 400 <= int(status_word) <= 599:
        script = replace(script, http_status=int(status_word))
        if word.endswith("ms"):
            ms = _number(name, words, i + 1, word, MAX_DELAY_MS)
            return replace(script, retry_after_ms=ms), i + 2
        if i + 1 < len(words) and words[i + 1].isdigit():
            seconds = _number(name, words, i + 1, word, 86_400)
            return replace(script, retry_after_s=seconds), i + 2
        return script, i + 1
    raise ScriptError(f"{name}: unknown directive {word!r} (see the fake provider's grammar)")


def _word(prompt: str, i: int) -> str:
    digest = hashlib.sha256(f"{i // 32}:{prompt}".encode()).digest()
    return VOCAB[digest[i % 32] % len(VOCAB)]


def answer_tokens(prompt: str, script: Script, max_tokens: int | None = None
                  ) -> tuple[list[str], bool]:
    """The answer's tokens and whether max_tokens cut it (finish reason `length`)."""
    if script.tokens is not None:
        count = script.tokens
    else:
        count = 8 + hashlib.sha256(prompt.encode()).digest()[0] % 9
    truncated = max_tokens is not None and max_tokens < count
    if truncated and max_tokens is not None:
        count = max_tokens
    return [("" if i == 0 else " ") + _word(prompt, i) for i in range(count)], truncated


def count_tokens(contents: Iterable[str]) -> int:
    """Input tokens in the fake's measure: whitespace-separated words of every message."""
    return sum(len(c.split()) for c in contents)


def prompt_of(contents: Iterable[str]) -> str:
    """The text the answer is derived from."""
    return "\n".join(contents)


def openai_error(status: int) -> tuple[str, str | None]:
    """(type, code) of an OpenAI error body for a status."""
    return OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else
                                      "invalid_request_error", None))


def anthropic_error(status: int) -> str:
    """error.type of an Anthropic error body for a status."""
    return ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
