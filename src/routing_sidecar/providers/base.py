"""What every adapter shares: keys, the attempt's running usage, deadlines, safe error text.

`timed_events` wraps an adapter's raw event generator with the provider's first-token and
total deadlines, counts the text deltas that pass (the output tokens streamed so far), stamps
that usage on any ProviderError, and closes the raw generator (and with it the upstream
request) whenever the consumer stops early.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from routing_sidecar.calls import (
    FinishReason,
    ProviderSettings,
    Secret,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)
from routing_sidecar.core import retry
from routing_sidecar.domain import AttemptStatus
from routing_sidecar.errors import ProviderError

log = logging.getLogger(__name__)

ERROR_TYPE_RE = re.compile(r"^[a-z0-9_]{1,48}$")
# Things that look like credentials in a provider's error text: OpenAI-style keys (also the
# masked "sk-abc***xyz" its 401s echo), bearer tokens, anything with a run of asterisks.
_KEYLIKE = re.compile(
    r"\b(?:sk|pk|rk)[-_][A-Za-z0-9*._\-]{4,}|\bBearer\s+\S+|\S*\*{3,}\S*", re.IGNORECASE
)
_MAX_MESSAGE = 200
MAX_RETRY_AFTER_S = 86_400.0  # a day; anything longer is a provider bug, not advice


def resolve_key(settings: ProviderSettings, environ: Mapping[str, str] | None = None
                ) -> Secret | None:
    """The provider's key from its env variable or file, or None (never logged)."""
    env = os.environ if environ is None else environ
    if settings.api_key_env:
        value = env.get(settings.api_key_env, "").strip()
        return Secret(value) if value else None
    if settings.api_key_file:
        try:
            value = Path(settings.api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            log.warning("provider key file cannot be read", extra={
                "provider": settings.name, "path": settings.api_key_file, "reason": reason,
            })
            return None
        return Secret(value) if value else None
    return None


def safe_text(text: str, secret: Secret | None = None, limit: int = _MAX_MESSAGE) -> str:
    """A provider's error text fit for messages and logs: no key, no key look-alike, short."""
    if secret is not None and secret.reveal():
        text = text.replace(secret.reveal(), "[redacted]")
    text = _KEYLIKE.sub("[redacted]", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the provider asked to wait: `retry-after-ms`, else `Retry-After` (secs or date)."""
    ms = _finite(headers.get("retry-after-ms"))
    if ms is not None and ms >= 0:
        return min(ms / 1000.0, MAX_RETRY_AFTER_S)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    secs = _finite(raw)
    if secs is not None:
        return min(secs, MAX_RETRY_AFTER_S) if secs >= 0 else None
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        return None
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER_S)


def _finite(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class ErrorObject:
    """The useful part of a provider's `error` object."""

    code: str | None  # the recognised (else first) of code / type, lower-cased
    http_status: int | None  # a numeric code (OpenRouter puts the HTTP status there)
    message: str


def error_object(body: Any) -> ErrorObject | None:
    """The error of an OpenAI / OpenRouter / Anthropic error body or stream event, if any."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if err is None or err is False:
        return None
    if not isinstance(err, dict):
        return ErrorObject(None, None, str(err))
    candidates: list[str] = []
    numeric: int | None = None
    for key in ("code", "type"):
        value = err.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and 100 <= value <= 599:
            numeric = value
        elif isinstance(value, str) and value.strip():
            candidates.append(value.strip().lower())
    known = [c for c in candidates if c in retry.KNOWN_CODES]
    code = known[0] if known else (candidates[0] if candidates else None)
    return ErrorObject(code, numeric, str(err.get("message") or ""))


def failure_from_error(provider: str, err: ErrorObject, secret: Secret | None,
                       *, http_status: int | None = None, retry_after_s: float | None = None,
                       ) -> ProviderError:
    """A classified ProviderError for an error object (in a 4xx/5xx body or a 200 stream)."""
    status_for_class = http_status if http_status is not None else err.http_status
    status = retry.classify(status_for_class, err.code)
    if retry.is_refusal(err.code):
        error_type = "content_refused"
    elif http_status is not None:
        error_type = f"http_{http_status}"
    elif err.code and ERROR_TYPE_RE.match(err.code):
        error_type = err.code
    else:
        error_type = "stream_error"
    where = f"HTTP {http_status}" if http_status is not None else "error in stream"
    # A 401/403 message is about the key itself: never repeat it.
    detail = "" if http_status in (401, 403) else safe_text(err.message, secret)
    message = f"{provider}: {where} ({err.code or error_type})" + (f": {detail}" if detail else "")
    return ProviderError(message, status=status, error_type=error_type,
                         http_status=http_status, retry_after_s=retry_after_s)


def refused(provider: str) -> ProviderError:
    """The provider refused the content (a finish or stop reason saying so)."""
    return ProviderError(f"{provider}: the provider refused the request",
                         status=AttemptStatus.PERMANENT_ERROR, error_type="content_refused")


def finish(provider: str, raw: str | None, usage: Usage, table: Mapping[str, FinishReason],
           refusals: Collection[str]) -> StreamEnd:
    """The end of an answer from the wire's finish (or stop) reason; refusals raise."""
    if raw in refusals:
        raise refused(provider).with_usage(usage)
    return StreamEnd(table.get(raw or "", FinishReason.OTHER), usage, raw or "")


def stream_cut(provider: str, what: str) -> ProviderError:
    """The answer stopped before its end marker."""
    return ProviderError(f"{provider}: {what}", status=AttemptStatus.TRANSIENT_ERROR,
                         error_type="stream_error")


class AttemptState:
    """What one attempt has consumed so far; the adapter and the deadline wrapper share it."""

    __slots__ = ("input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens = 0  # text deltas passed to the consumer

    def usage(self) -> Usage:
        """Counted (not reported) usage so far."""
        return Usage(self.input_tokens, self.output_tokens, None, reported=False)


async def timed_events(
    raw: AsyncGenerator[StreamEvent, None], state: AttemptState, settings: ProviderSettings,
    *, streamed: bool = True,
) -> AsyncGenerator[StreamEvent, None]:
    """`raw` under the first-token and total deadlines; failures carry the usage so far.

    A non-streamed call (`streamed=False`) has only the total deadline: its first event is
    the whole answer, which no first-token deadline should cut short.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    total_at = start + settings.timeout_s
    first_at = min(start + settings.first_token_timeout_s, total_at) if streamed else total_at
    got_first = False
    try:
        while True:
            limit = total_at if got_first else first_at
            try:
                # The deadline covers only the wait for the next event, never the consumer's
                # own time between events (a timeout spanning `yield` would cancel the caller).
                async with asyncio.timeout_at(limit):
                    event = await anext(raw)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _deadline_error(settings, got_first, limit < total_at, state) from None
            except ProviderError as exc:
                raise exc.with_usage(_merge(exc.usage, state)) from None
            if isinstance(event, TextDelta):
                got_first = True
                state.output_tokens += 1
            yield event
    finally:
        await raw.aclose()


def _merge(usage: Usage, state: AttemptState) -> Usage:
    if usage.reported:
        return usage
    return Usage(state.input_tokens if usage.input_tokens is None else usage.input_tokens,
                 max(usage.output_tokens, state.output_tokens), usage.cost_micros, False)


def _deadline_error(settings: ProviderSettings, got_first: bool, first_deadline: bool,
                    state: AttemptState) -> ProviderError:
    if not got_first and first_deadline:
        what, error_type = f"no first token within {settings.first_token_timeout_s:g}s", (
            "first_token_timeout")
    else:
        what, error_type = f"not finished within {settings.timeout_s:g}s", "timeout"
    return ProviderError(f"{settings.name}: {what}", status=AttemptStatus.TIMEOUT,
                         error_type=error_type, usage=state.usage())
