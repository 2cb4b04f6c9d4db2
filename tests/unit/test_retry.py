"""The pure attempt plan: classification, backoff with full jitter, retry or fall back."""

from __future__ import annotations

import random

import pytest

from routing_sidecar.core import retry
from routing_sidecar.core.retry import Action
from routing_sidecar.domain import AttemptStatus, RetryPolicy

T, P, R = (AttemptStatus.TRANSIENT_ERROR, AttemptStatus.PERMANENT_ERROR,
           AttemptStatus.RATE_LIMITED)


@pytest.mark.parametrize(("http_status", "code", "expected"), [
    # transient statuses
    (408, None, T), (409, None, T), (425, None, T), (500, None, T), (502, None, T),
    (503, None, T), (504, None, T), (529, None, T), (599, None, T),
    # rate limited
    (429, None, R), (429, "rate_limit_exceeded", R), (429, "rate_limit_error", R),
    # permanent statuses
    (400, None, P), (401, None, P), (402, None, P), (403, None, P), (404, None, P),
    (413, None, P), (422, None, P), (418, None, P),
    # a known code decides before the status
    (429, "insufficient_quota", P),  # OpenAI's "out of credit" is a 429 no wait will lift
    (400, "content_policy_violation", P), (200, "content_filter", P),
    (400, "rate_limit_error", R), (400, "overloaded_error", T),
    # error objects inside a 200 stream: no HTTP status
    (None, "overloaded_error", T), (None, "server_error", T), (None, "api_error", T),
    (None, "rate_limit_error", R), (None, "invalid_request_error", P),
    (None, "authentication_error", P), (None, "refusal", P),
    (None, "Overloaded_Error", T),  # codes are compared lower-cased
    # unknown codes: the status decides, else transient (the request was accepted)
    (None, "something_new", T), (None, None, T), (503, "something_new", T),
    (404, "something_new", P), (302, None, P), (204, None, T),
])
def test_classify(http_status: int | None, code: str | None, expected: AttemptStatus) -> None:
    assert retry.classify(http_status, code) is expected


@pytest.mark.parametrize(("code", "refused"), [
    ("content_policy_violation", True), ("content_filter", True), ("refusal", True),
    ("server_error", False), (None, False), ("", False),
])
def test_is_refusal(code: str | None, refused: bool) -> None:
    assert retry.is_refusal(code) is refused


POLICY = RetryPolicy(max_retries=3, base_backoff_s=0.2, max_backoff_s=1.0)


@pytest.mark.parametrize(("retry_index", "cap"), [(0, 0.2), (1, 0.4), (2, 0.8), (3, 1.0),
                                                  (10, 1.0), (500, 1.0)])
def test_backoff_is_full_jitter_under_the_exponential_cap(retry_index: int, cap: float) -> None:
    rng = random.Random(7)
    draws = [retry.backoff_s(POLICY, retry_index, rng) for _ in range(2000)]
    assert all(0.0 <= d <= cap for d in draws)
    # Full jitter spreads over the whole interval, not just near the cap.
    assert min(draws) < cap * 0.05
    assert max(draws) > cap * 0.95


def test_backoff_is_the_drawn_uniform() -> None:
    expected = random.Random(42).uniform(0.0, 0.4)
    assert retry.backoff_s(POLICY, 1, random.Random(42)) == expected


@pytest.mark.parametrize("retry_after", [0.5, 0.9, 3.0])
def test_backoff_never_below_retry_after(retry_after: float) -> None:
    rng = random.Random(1)
    for _ in range(200):
        assert retry.backoff_s(POLICY, 0, rng, retry_after) >= retry_after


def test_backoff_with_zero_base_is_zero_unless_retry_after() -> None:
    flat = RetryPolicy(max_retries=2, base_backoff_s=0.0, max_backoff_s=1.0)
    assert retry.backoff_s(flat, 3, random.Random(0)) == 0.0
    assert retry.backoff_s(flat, 3, random.Random(0), 0.25) == 0.25


def test_backoff_rejects_negative_index() -> None:
    with pytest.raises(ValueError, match="retry_index"):
        retry.backoff_s(POLICY, -1, random.Random(0))


TO = AttemptStatus.TIMEOUT


@pytest.mark.parametrize(
    ("attempts", "failure", "retry_after", "time_left", "action", "reason"), [
        # transient failures are retried while retries remain
        (1, T, None, None, Action.RETRY, "retry 1 of 3"),
        (2, TO, None, None, Action.RETRY, "retry 2 of 3"),
        (3, R, None, None, Action.RETRY, "retry 3 of 3"),
        (4, T, None, None, Action.NEXT_MODEL, "3 retries used"),
        # permanent failures move on at once, whatever is left
        (1, P, None, None, Action.NEXT_MODEL, "PERMANENT_ERROR is not retried"),
        # a Retry-After the policy will not wait for: the next model is better
        (1, R, 2.0, None, Action.NEXT_MODEL, "retry-after 2s exceeds max_backoff_s 1"),
        (1, R, 1.0, None, Action.RETRY, "retry 1 of 3"),
        # the caller's deadline
        (1, R, 0.9, 0.5, Action.NEXT_MODEL, "exceeds the deadline"),
        (1, T, None, 10.0, Action.RETRY, "retry 1 of 3"),
        (1, T, None, 0.0, Action.NEXT_MODEL, "exceeds the deadline"),
    ])
def test_plan(attempts: int, failure: AttemptStatus, retry_after: float | None,
              time_left: float | None, action: Action, reason: str) -> None:
    step = retry.plan(POLICY, attempts, failure, random.Random(3), retry_after_s=retry_after,
                      time_left_s=time_left)
    assert step.action is action
    assert reason in step.reason
    if action is Action.NEXT_MODEL:
        assert step.delay_s == 0.0
    else:
        assert step.delay_s >= (retry_after or 0.0)
        cap = min(POLICY.max_backoff_s, POLICY.base_backoff_s * 2 ** (attempts - 1))
        assert step.delay_s <= max(cap, retry_after or 0.0)


def test_plan_delay_is_the_backoff_of_the_retry_index() -> None:
    # The second attempt failed: its retry is retry index 1 (cap 0.4), drawn from the rng.
    step = retry.plan(POLICY, 2, T, random.Random(9))
    assert step.delay_s == retry.backoff_s(POLICY, 1, random.Random(9))


def test_plan_honours_retry_after_within_the_cap() -> None:
    step = retry.plan(POLICY, 1, R, random.Random(0), retry_after_s=0.75)
    assert step.action is Action.RETRY
    assert step.delay_s >= 0.75


def test_plan_with_no_retries_always_moves_on() -> None:
    none = RetryPolicy(max_retries=0)
    for failure in (T, TO, R, P):
        assert retry.plan(none, 1, failure, random.Random(0)).action is Action.NEXT_MODEL


@pytest.mark.parametrize(("attempts", "failure"), [(0, T), (1, AttemptStatus.SUCCESS)])
def test_plan_rejects_nonsense(attempts: int, failure: AttemptStatus) -> None:
    with pytest.raises(ValueError, match=r"attempts_on_model|failed attempts"):
        retry.plan(POLICY, attempts, failure, random.Random(0))


def test_plan_is_reproducible_from_its_inputs() -> None:
    a = [retry.plan(POLICY, 1, T, random.Random(5)).delay_s for _ in range(3)]
    assert len(set(a)) == 1
