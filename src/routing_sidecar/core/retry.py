"""Attempt plan: which failures are transient, backoff with full jitter, retry or fall back.

Pure: no I/O and no clock; randomness is the `random.Random` passed in, so a plan is
reproducible from its inputs.

Classification (`classify`):
- transient: connect errors, timeouts, HTTP 408, 409, 425, 429, 500, 502, 503, 504, 529 (and any
  other 5xx), an error object saying overloaded or rate limited;
- permanent: HTTP 400, 401, 402, 403, 404, 413, 422 (and any other 4xx), a redirect (never
  followed), a refused request (content policy), an exhausted quota (a 429 no wait will lift).
A known error code decides before the HTTP status; an unknown failure with neither (e.g. an
error object with no recognised type inside a 200 stream) counts as transient, since the
request itself was accepted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from routing_sidecar.domain import AttemptStatus, RetryPolicy

TRANSIENT_HTTP = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
PERMANENT_HTTP = frozenset({400, 401, 402, 403, 404, 413, 422})

# Error codes and types providers put in their error objects (OpenAI `error.type`/`error.code`,
# Anthropic `error.type`, OpenRouter `error.code`), lower-cased.
RATE_LIMIT_CODES = frozenset({
    "rate_limit_error", "rate_limit_exceeded", "rate_limited", "too_many_requests",
    "tokens_exceeded", "requests_exceeded",
})
OVERLOADED_CODES = frozenset({
    "overloaded_error", "overloaded", "server_overloaded", "engine_overloaded",
    "api_error", "server_error", "internal_error", "internal_server_error",
    "service_unavailable", "bad_gateway", "gateway_timeout", "timeout", "upstream_error",
})
REFUSED_CODES = frozenset({
    "content_policy_violation", "content_filter", "content_filtered", "refusal",
    "content_refused", "moderation_blocked", "safety",
})
QUOTA_CODES = frozenset({"insufficient_quota", "billing_error", "insufficient_credits"})
PERMANENT_CODES = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "request_too_large", "invalid_api_key", "model_not_found", "context_length_exceeded",
    "unsupported_parameter", "invalid_value", "string_above_max_length",
}) | REFUSED_CODES | QUOTA_CODES
KNOWN_CODES = RATE_LIMIT_CODES | OVERLOADED_CODES | PERMANENT_CODES

RETRYABLE = frozenset(
    {AttemptStatus.TRANSIENT_ERROR, AttemptStatus.TIMEOUT, AttemptStatus.RATE_LIMITED}
)
_MAX_EXPONENT = 32  # 2**32 times any base already exceeds every sane max_backoff_s


def classify(http_status: int | None = None, error_code: str | None = None) -> AttemptStatus:
    """The attempt status of a failed call from its HTTP status and/or its error code."""
    code = (error_code or "").strip().lower()
    if code in PERMANENT_CODES:
        return AttemptStatus.PERMANENT_ERROR
    if code in RATE_LIMIT_CODES or http_status == 429:
        return AttemptStatus.RATE_LIMITED
    if code in OVERLOADED_CODES:
        return AttemptStatus.TRANSIENT_ERROR
    if http_status is None:
        return AttemptStatus.TRANSIENT_ERROR
    if http_status in TRANSIENT_HTTP or http_status >= 500:
        return AttemptStatus.TRANSIENT_ERROR
    if http_status in PERMANENT_HTTP or 300 <= http_status < 500:
        # 3xx too: a redirect is never followed (a wrong base_url), and retrying the same URL
        # meets the same redirect.
        return AttemptStatus.PERMANENT_ERROR
    return AttemptStatus.TRANSIENT_ERROR  # a 1xx/2xx that could not be used


def is_refusal(error_code: str | None) -> bool:
    """True when an error code means the provider refused the content (never retried)."""
    return (error_code or "").strip().lower() in REFUSED_CODES


def backoff_s(
    policy: RetryPolicy, retry_index: int, rng: random.Random,
    retry_after_s: float | None = None,
) -> float:
    """Delay before retry number `retry_index` (0 for the first): full jitter, >= Retry-After.

    uniform(0, min(max_backoff_s, base_backoff_s * 2**retry_index)), raised to the provider's
    Retry-After when it asked for longer.
    """
    if retry_index < 0:
        raise ValueError("retry_index must be >= 0")
    cap = min(policy.max_backoff_s, policy.base_backoff_s * 2 ** min(retry_index, _MAX_EXPONENT))
    delay = rng.uniform(0.0, cap) if cap > 0 else 0.0
    if retry_after_s is not None and retry_after_s > delay:
        delay = retry_after_s
    return delay


class Action(StrEnum):
    """What to do after a failed attempt."""

    RETRY = "retry"  # the same model again, after `delay_s`
    NEXT_MODEL = "next_model"  # the next model of the fallback chain, now


@dataclass(frozen=True, slots=True)
class Step:
    """The plan's answer: an action, how long to wait first, and why (for the audit trail)."""

    action: Action
    delay_s: float = 0.0
    reason: str = ""


def plan(
    policy: RetryPolicy,
    attempts_on_model: int,
    failure: AttemptStatus,
    rng: random.Random,
    *,
    retry_after_s: float | None = None,
    time_left_s: float | None = None,
) -> Step:
    """After the `attempts_on_model`-th attempt on the current model failed: retry or move on.

    Retries the same model while the failure is transient, the policy's `max_retries` are not
    used up, the provider's Retry-After fits under `max_backoff_s` (a longer wait is better
    spent on the next model), and the delay leaves time before the caller's deadline
    (`time_left_s`, None for no deadline). Otherwise: the next model, at once.
    """
    if failure is AttemptStatus.SUCCESS:
        raise ValueError("plan() is for failed attempts")
    if attempts_on_model < 1:
        raise ValueError("attempts_on_model counts the attempt that just failed (>= 1)")
    if failure not in RETRYABLE:
        return Step(Action.NEXT_MODEL, reason=f"{failure.value} is not retried")
    retries_used = attempts_on_model - 1
    if retries_used >= policy.max_retries:
        return Step(Action.NEXT_MODEL, reason=f"{policy.max_retries} retries used")
    if retry_after_s is not None and retry_after_s > policy.max_backoff_s:
        return Step(Action.NEXT_MODEL, reason=(
            f"retry-after {retry_after_s:g}s exceeds max_backoff_s {policy.max_backoff_s:g}"
        ))
    delay = backoff_s(policy, retries_used, rng, retry_after_s)
    if time_left_s is not None and delay >= time_left_s:
        return Step(Action.NEXT_MODEL, reason=f"backoff {delay:.3f}s exceeds the deadline")
    return Step(Action.RETRY, delay, reason=f"retry {retries_used + 1} of {policy.max_retries}")
