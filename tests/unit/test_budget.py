"""Ledger arithmetic, calendar periods, scope rules and restore, all pure and synchronous."""

from __future__ import annotations

import random
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from routing_sidecar import errors
from routing_sidecar.config import load_config, parse_config
from routing_sidecar.core.budget import Ledger
from routing_sidecar.core.budget_rules import (
    EntryKind,
    LedgerChange,
    LedgerEntry,
    period_bounds,
    scopes_for,
)
from routing_sidecar.core.candidates import first_block
from routing_sidecar.core.view import BudgetLine
from routing_sidecar.domain import (
    BudgetPeriod,
    BudgetRule,
    BudgetState,
    ModelSpec,
    OnExceed,
)
from tests.conftest import DEFAULT_CONFIG

DAY, WEEK, MONTH, TASK = (BudgetPeriod.DAY, BudgetPeriod.WEEK, BudgetPeriod.MONTH,
                          BudgetPeriod.TASK)
GPT5 = ModelSpec("gpt-5", "openai", 3, 1_250_000, 10_000_000, 400_000, 60, 0.91)
HAIKU = ModelSpec("claude-haiku-4-5", "anthropic", 1, 1_000_000, 5_000_000, 200_000, 150, 0.72)
ALPHA = {"project": "alpha", "worker": "w1"}
BETA = {"project": "beta"}
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()  # a Tuesday
TTL = 900.0


def ts(*args: int, tz: timezone | ZoneInfo = UTC) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def ledger(*rules: BudgetRule, tz: timezone | ZoneInfo = UTC) -> Ledger:
    return Ledger(rules, tz)


@dataclass(frozen=True)
class Reserved:
    block: BudgetLine | None
    change: LedgerChange

    @property
    def ok(self) -> bool:
        return self.block is None

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return self.change.entries

    @property
    def alerts(self):  # type: ignore[no-untyped-def]
        return self.change.alerts


def reserve(led: Ledger, rid: str, amount: int, labels: dict[str, str] | None = None,
            model: ModelSpec = GPT5, now: float = T0, policy: str = "code",
            task: str | None = None) -> Reserved:
    """Reserve for a decision of its own task (`task-<rid>`) unless a task id is given."""
    block, change = led.reserve(rid, labels if labels is not None else ALPHA, model, policy,
                                task or f"task-{rid}", amount, now, now + TTL)
    return Reserved(block, change)


def settle(led: Ledger, rid: str, amount: int, now: float = T0, *, model: ModelSpec = GPT5,
           labels: dict[str, str] | None = None, at: float = T0,
           task: str | None = None) -> LedgerChange:
    """Settle one attempt of `amount` on `model` for the decision `rid` made at `at`."""
    return led.settle(rid, labels if labels is not None else ALPHA, "code", task or f"task-{rid}",
                      [(model, amount)], at, now)


def by_scope(led: Ledger, now: float = T0) -> dict[tuple[str, BudgetPeriod], tuple[int, int]]:
    return {(s.scope, s.period): (s.spent_micros, s.reserved_micros) for s in led.status(now)
            if s.period is not TASK}


# -- periods ------------------------------------------------------------------------------

@pytest.mark.parametrize(("period", "start", "end"), [
    (DAY, (2026, 3, 10), (2026, 3, 11)),
    (WEEK, (2026, 3, 9), (2026, 3, 16)),       # ISO week: Monday to Monday
    (MONTH, (2026, 3, 1), (2026, 4, 1)),
])
def test_period_bounds_utc(period: BudgetPeriod, start: tuple[int, int, int],
                           end: tuple[int, int, int]) -> None:
    assert period_bounds(period, T0, UTC) == (ts(*start), ts(*end))


def test_period_bounds_december_rolls_into_january() -> None:
    now = ts(2026, 12, 31, 23, 59)
    assert period_bounds(MONTH, now, UTC) == (ts(2026, 12, 1), ts(2027, 1, 1))
    assert period_bounds(WEEK, now, UTC) == (ts(2026, 12, 28), ts(2027, 1, 4))
    assert period_bounds(DAY, ts(2027, 1, 1), UTC) == (ts(2027, 1, 1), ts(2027, 1, 2))


def test_period_bounds_in_a_non_utc_zone_follow_local_midnight() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    # 20:00 UTC on March 31 is already April 1 in India.
    now = ts(2026, 3, 31, 20, 0)
    assert period_bounds(DAY, now, ist) == (ts(2026, 4, 1, tz=ist), ts(2026, 4, 2, tz=ist))
    assert period_bounds(MONTH, now, ist) == (ts(2026, 4, 1, tz=ist), ts(2026, 5, 1, tz=ist))
    assert period_bounds(MONTH, now, UTC) == (ts(2026, 3, 1), ts(2026, 4, 1))


def test_period_bounds_across_dst_use_real_day_length() -> None:
    ny = ZoneInfo("America/New_York")
    start, end = period_bounds(DAY, ts(2026, 3, 8, 12, tz=ny), ny)  # spring forward
    assert end - start == 23 * 3600
    start, end = period_bounds(WEEK, ts(2026, 10, 28, tz=ny), ny)   # holds Nov 1 fall back
    assert end - start == 7 * 86400 + 3600


def test_task_period_has_no_calendar_bounds() -> None:
    with pytest.raises(ValueError, match="task"):
        period_bounds(TASK, T0, UTC)


# -- rules and scopes -----------------------------------------------------------------------

def test_config_budgets_become_rules_with_default_periods_in_micros() -> None:
    cfg = parse_config(textwrap.dedent("""
        models:
          m: {provider: p, tier: 1, input_per_mtok: 1, output_per_mtok: 2,
              context_window: 1000, tokens_per_s: 10, quality: 0.5}
        policies: {normal: {models: [m]}}
        default_policy: normal
        budgets:
          - {scope: global, period: day, limit_usd: 50, alert_at: 0.9, on_exceed: downgrade}
          - {scope: "project:*", limit_usd: 300.000001}
          - {scope: task, limit_usd: 1.10}
    """))
    assert cfg.settings().budgets == (
        BudgetRule("global", DAY, 50_000_000, 0.9, OnExceed.DOWNGRADE),
        BudgetRule("project:*", MONTH, 300_000_001, 0.8, OnExceed.REJECT),
        BudgetRule("task", TASK, 1_100_000, 0.8, OnExceed.REJECT),
    )
    shipped = load_config(DEFAULT_CONFIG)
    assert len(shipped.settings().budgets) == len(shipped.budgets)


def test_scopes_for_names_every_scope_a_decision_touches() -> None:
    assert scopes_for(ALPHA, GPT5, "code") == (
        "global", "project:alpha", "provider:openai", "model:gpt-5", "policy:code", "worker:w1")
    assert scopes_for({}, HAIKU, "ops") == (
        "global", "provider:anthropic", "model:claude-haiku-4-5", "policy:ops")


# -- reserve / settle / release / expire / revert ----------------------------------------------

def test_reserve_then_settle_moves_the_actual_amount_to_spent() -> None:
    led = ledger(BudgetRule("global", DAY, 1_000), BudgetRule("project:alpha", MONTH, 5_000))
    r = reserve(led, "r1", 300)
    assert r.ok
    assert {(e.kind, e.scope, e.amount_micros) for e in r.entries} == {
        (EntryKind.RESERVE, "global", 300), (EntryKind.RESERVE, "project:alpha", 300)}
    assert by_scope(led) == {("global", DAY): (0, 300), ("project:alpha", MONTH): (0, 300)}
    change = settle(led, "r1", 250, T0 + 5)
    assert by_scope(led) == {("global", DAY): (250, 0), ("project:alpha", MONTH): (250, 0)}
    assert sorted((e.kind, e.amount_micros) for e in change.entries) == [
        (EntryKind.RELEASE, -300), (EntryKind.RELEASE, -300),
        (EntryKind.SETTLE, 250), (EntryKind.SETTLE, 250)]


def test_settle_charges_each_attempt_s_provider_in_the_reservation_s_period() -> None:
    led = ledger(BudgetRule("global", MONTH, 10_000), BudgetRule("provider:*", MONTH, 10_000))
    last_minute = ts(2026, 3, 31, 23, 59)
    reserved = reserve(led, "r1", 500, model=GPT5, now=last_minute)
    assert reserved.ok
    april = ts(2026, 4, 1, 0, 5)
    change = led.settle("r1", ALPHA, "code", "task-r1", [(GPT5, 120), (HAIKU, 300)],
                        last_minute, april)
    march = {(s.scope, s.period): (s.spent_micros, s.reserved_micros)
             for s in led.status(last_minute)}
    assert march == {("global", MONTH): (420, 0), ("provider:openai", MONTH): (120, 0),
                     ("provider:anthropic", MONTH): (300, 0)}
    assert all(s.spent_micros == 0 for s in led.status(april))
    restored = ledger(BudgetRule("global", MONTH, 10_000), BudgetRule("provider:*", MONTH, 10_000))
    restored.restore([*reserved.entries, *change.entries])
    assert {(s.scope, s.period): (s.spent_micros, s.reserved_micros)
            for s in restored.status(last_minute)} == march


def test_revert_of_a_failed_settle_across_a_month_boundary_restores_the_reservation() -> None:
    # A settle that fails to commit across midnight on the last day of a month, then retried,
    # must charge the month the reservation was made in and release that month's hold.
    led = ledger(BudgetRule("global", MONTH, 10_000))
    last_minute = ts(2026, 3, 31, 23, 59)
    assert reserve(led, "r1", 500, now=last_minute).ok
    april = ts(2026, 4, 1, 0, 1)
    failed = settle(led, "r1", 400, april, at=last_minute)
    led.revert(failed)
    assert by_scope(led, last_minute) == {("global", MONTH): (0, 500)}
    assert led.holds("r1")
    settle(led, "r1", 400, april + 60, at=last_minute)
    assert by_scope(led, last_minute) == {("global", MONTH): (400, 0)}
    assert by_scope(led, april) == {("global", MONTH): (0, 0)}


def test_a_repeat_settle_is_undone_by_revert() -> None:
    led = ledger(BudgetRule("global", DAY, 1_000))
    reserve(led, "r1", 300)
    assert settle(led, "r1", 200).entries
    repeat = settle(led, "r1", 200)  # charged as if unreserved: the store's outcome row says no
    assert by_scope(led) == {("global", DAY): (400, 0)}
    led.revert(repeat)
    assert by_scope(led) == {("global", DAY): (200, 0)}


def test_a_decision_that_reserved_nothing_is_charged_in_its_own_period() -> None:
    # A REJECTED decision the orchestrator ran anyway: its spend still lands in the books.
    led = ledger(BudgetRule("global", DAY, 1_000))
    yesterday = T0 - 86_400
    change = settle(led, "rejected", 120, T0, at=yesterday)
    assert [(e.kind, e.period_start) for e in change.entries] == [
        (EntryKind.SETTLE, ts(2026, 3, 9))]
    assert by_scope(led, yesterday) == {("global", DAY): (120, 0)}
    assert by_scope(led, T0) == {("global", DAY): (0, 0)}


def test_release_expire_and_revert_free_the_reservation() -> None:
    led = ledger(BudgetRule("global", DAY, 1_000))
    reserve(led, "a", 100)
    reserve(led, "b", 200)
    c = reserve(led, "c", 400, now=T0 + 600)
    assert [e.amount_micros for e in led.release("a", T0 + 1).entries] == [-100]
    assert led.release("a", T0 + 1).entries == ()
    led.revert(c.change)  # its reserve rows never committed: nothing to persist
    assert not led.holds("c")
    assert by_scope(led) == {("global", DAY): (0, 200)}
    assert led.expire(T0 + TTL - 1).entries == ()
    expired = led.expire(T0 + TTL)
    assert [(e.kind, e.reservation_id, e.amount_micros) for e in expired.entries] == [
        (EntryKind.EXPIRE, "b", -200)]
    assert by_scope(led) == {("global", DAY): (0, 0)}
    led.revert(expired)  # an expiry that failed to commit leaves the reservation open
    assert by_scope(led) == {("global", DAY): (0, 200)}
    assert led.expire(T0 + TTL).entries == expired.entries


def test_a_late_outcome_still_charges_an_expired_reservation() -> None:
    led = ledger(BudgetRule("global", DAY, 1_000))
    reserve(led, "slow", 100)
    led.expire(T0 + TTL)
    change = settle(led, "slow", 120, T0 + TTL + 60)
    assert [(e.kind, e.amount_micros) for e in change.entries] == [(EntryKind.SETTLE, 120)]
    assert by_scope(led) == {("global", DAY): (120, 0)}


def test_settle_lands_in_the_period_it_was_reserved_in() -> None:
    led = ledger(BudgetRule("global", DAY, 1_000))
    late = ts(2026, 3, 10, 23, 59)
    reserve(led, "r1", 300, now=late)
    next_day = ts(2026, 3, 11, 0, 5)
    settle(led, "r1", 280, next_day, at=late)
    assert by_scope(led, late) == {("global", DAY): (280, 0)}
    status = led.status(next_day)[0]
    assert (status.spent_micros, status.reserved_micros) == (0, 0)
    assert (status.period_start, status.period_end) == (ts(2026, 3, 11), ts(2026, 3, 12))


def test_duplicate_and_negative_reservations_are_refused() -> None:
    led = ledger(BudgetRule("global", DAY, 1_000))
    reserve(led, "r1", 1)
    with pytest.raises(errors.AlreadyExists):
        reserve(led, "r1", 1)
    with pytest.raises(errors.InvalidArgument, match="amount_micros"):
        reserve(led, "r2", -1)


def test_old_periods_are_forgotten_once_nothing_can_charge_them() -> None:
    led = ledger(BudgetRule("global", DAY, 1_000), BudgetRule("task", TASK, 1_000))
    reserve(led, "r1", 100)
    settle(led, "r1", 90)
    led.expire(T0 + 3 * 86_400)  # the day is over, the task's week-long window is not
    assert led.lines(ALPHA, GPT5, "code", "task-r1", T0)[1].used_micros == 90
    led.expire(T0 + 9 * 86_400)
    assert led.lines(ALPHA, GPT5, "code", "task-r1", T0) == (
        BudgetLine(BudgetRule("global", DAY, 1_000), "global", 0),
        BudgetLine(BudgetRule("task", TASK, 1_000), "task:task-r1", 0))


# -- limits ----------------------------------------------------------------------------------

def test_lines_name_the_first_rule_broken_in_config_order() -> None:
    led = ledger(BudgetRule("global", DAY, 10_000), BudgetRule("project:alpha", MONTH, 500),
                 BudgetRule("provider:openai", WEEK, 400))
    block = first_block(led.lines(ALPHA, GPT5, "code", "t", T0), 600)
    assert block is not None
    assert (block.key, block.rule.period) == ("project:alpha", MONTH)
    assert block.reason(600) == "budget project:alpha/month exhausted"
    beta = first_block(led.lines(BETA, GPT5, "code", "t", T0), 600)
    assert beta is not None and beta.key == "provider:openai"
    assert first_block(led.lines(BETA, HAIKU, "code", "t", T0), 600) is None


def test_the_per_task_limit_adds_up_every_decision_of_one_task() -> None:
    led = ledger(BudgetRule("task", TASK, 1_000))
    assert reserve(led, "a", 600, task="T-42").ok
    again = reserve(led, "b", 600, task="T-42")  # the same task routed again
    assert not again.ok and again.entries == ()
    assert again.block is not None and again.block.key == "task:T-42"
    assert again.block.reason(600) == (
        "budget task exceeded: $0.0006 used + est. $0.0006 above the per-task limit $0.0010")
    assert reserve(led, "c", 1_000, task="T-43").ok  # another task has its own limit
    settle(led, "a", 100, task="T-42")
    assert reserve(led, "d", 900, task="T-42").ok  # what was not spent is free again
    [line] = led.lines(ALPHA, GPT5, "code", "T-42", T0)
    assert line.used_micros == 1_000
    assert [(s.scope, s.reserved_micros, s.spent_micros) for s in led.statuses_for(
        ALPHA, GPT5, "code", "T-42", T0)] == [("task:T-42", 900, 100)]


def test_project_wildcard_limits_each_project_separately_and_exact_scope_overrides() -> None:
    led = ledger(BudgetRule("project:*", MONTH, 1_000), BudgetRule("project:alpha", MONTH, 3_000))
    assert reserve(led, "a1", 2_500).ok                       # alpha has its own 3000
    assert reserve(led, "b1", 900, labels=BETA).ok
    assert not reserve(led, "b2", 200, labels=BETA).ok        # beta's 1000 from project:*
    assert reserve(led, "g1", 1_000, labels={"project": "gamma"}).ok
    assert reserve(led, "x", 5_000, labels={}).ok             # no project: no project budget
    got = {(s.scope, s.limit_micros, s.spent_micros + s.reserved_micros) for s in led.status(T0)}
    assert got == {("project:alpha", 3_000, 2_500), ("project:beta", 1_000, 900),
                   ("project:gamma", 1_000, 1_000)}
    assert [s.scope for s in led.status(T0, ["project:b*"])] == ["project:beta"]


def test_a_free_call_is_never_blocked() -> None:
    led = ledger(BudgetRule("global", DAY, 100))
    reserve(led, "r1", 100)
    settle(led, "r1", 150)  # the real call cost more than the limit
    assert first_block(led.lines(ALPHA, GPT5, "code", "t", T0), 1) is not None
    assert first_block(led.lines(ALPHA, GPT5, "code", "t", T0), 0) is None


def test_two_hundred_reservations_against_a_limit_that_fits_fifty() -> None:
    led = ledger(BudgetRule("global", DAY, 50 * 7_777), BudgetRule("task", TASK, 10_000))
    results = [reserve(led, f"r{i}", 7_777) for i in range(200)]
    assert sum(r.ok for r in results) == 50
    assert all(r.ok for r in results[:50])
    status = led.status(T0, ["global"])[0]
    assert (status.reserved_micros, status.remaining_micros) == (50 * 7_777, 0)
    assert status.state is BudgetState.EXCEEDED


# -- alerts ----------------------------------------------------------------------------------

def test_alert_crossing_is_reported_once_per_period() -> None:
    led = ledger(BudgetRule("global", DAY, 1_000, alert_at=0.8))
    assert reserve(led, "r1", 700).alerts == ()
    alerts = reserve(led, "r2", 150).alerts
    assert [(a.scope, a.state, a.used_micros) for a in alerts] == [
        ("global", BudgetState.ALERT, 850)]
    assert led.status(T0)[0].state is BudgetState.ALERT
    led.release("r2", T0)
    assert reserve(led, "r3", 120).alerts == ()               # crossed again: already told
    exceeded = reserve(led, "r4", 180).alerts
    assert [a.state for a in exceeded] == [BudgetState.EXCEEDED]
    tomorrow = T0 + 86_400
    again = reserve(led, "r5", 900, now=tomorrow).alerts      # a new period alerts anew
    assert [(a.state, a.period_start) for a in again] == [
        (BudgetState.ALERT, ts(2026, 3, 11))]


def test_an_overrun_at_settle_raises_an_alert() -> None:
    led = ledger(BudgetRule("global", DAY, 1_000, alert_at=0.5))
    reserve(led, "r1", 100)
    change = settle(led, "r1", 1_200)
    assert [a.state for a in change.alerts] == [BudgetState.ALERT, BudgetState.EXCEEDED]


# -- persistence: rows, restore, revert -------------------------------------------------------

RULES = (BudgetRule("global", DAY, 4_000_000, 0.5), BudgetRule("project:*", MONTH, 3_000_000),
         BudgetRule("provider:openai", WEEK, 5_000_000), BudgetRule("task", TASK, 90_000))


def churn(led: Ledger, seed: int = 7) -> list[LedgerEntry]:
    """A seeded mix of every mutation over two days; returns every row they asked to persist."""
    rng = random.Random(seed)
    rows: list[LedgerEntry] = []
    now, ids = T0, []
    for i in range(400):
        now += rng.uniform(0, 400)
        op = rng.random()
        if op < 0.5 or not ids:
            labels = rng.choice([ALPHA, BETA, {}, {"project": "gamma", "worker": "w2"}])
            r = reserve(led, f"r{i}", rng.randint(0, 100_000), labels,
                        rng.choice([GPT5, HAIKU]), now)
            rows += r.entries
            ids += [f"r{i}"] if r.ok else []
        elif op < 0.8:
            rows += settle(led, ids.pop(rng.randrange(len(ids))), rng.randint(0, 120_000),
                           now, model=rng.choice([GPT5, HAIKU]), at=now).entries
        elif op < 0.9:
            rows += led.release(ids.pop(rng.randrange(len(ids))), now).entries
        else:
            rows += led.expire(now).entries
    return rows


def test_summing_the_rows_reproduces_the_totals() -> None:
    led = ledger(*RULES)
    rows = churn(led)
    sums: dict[tuple[str, BudgetPeriod, float], list[int]] = defaultdict(lambda: [0, 0])
    for e in rows:
        sums[e.bucket][0 if e.kind is EntryKind.SETTLE else 1] += e.amount_micros
    for status in led.status(T0) + led.status(T0 + 86_400):
        assert sums.get((status.scope, status.period, status.period_start), [0, 0]) == [
            status.spent_micros, status.reserved_micros]


def test_restore_from_entries_reproduces_status_exactly() -> None:
    led = ledger(*RULES)
    rows = churn(led)
    again = ledger(*RULES)
    again.restore(rows)
    for now in (T0, T0 + 86_400, T0 + 40 * 86_400):
        assert again.status(now) == led.status(now)
    # Open reservations came back too: settling one works and expiring the rest matches.
    assert again.expire(T0 + 3 * 86_400).entries == led.expire(T0 + 3 * 86_400).entries
    assert again.status(T0 + 86_400) == led.status(T0 + 86_400)


def test_restore_does_not_re_alert_thresholds_already_passed() -> None:
    led = ledger(BudgetRule("global", DAY, 1_000, 0.5))
    rows = list(reserve(led, "r1", 600).entries)
    again = ledger(BudgetRule("global", DAY, 1_000, 0.5))
    again.restore(rows)
    assert reserve(again, "r2", 100).alerts == ()
    assert [a.state for a in reserve(again, "r3", 300).alerts] == [BudgetState.EXCEEDED]


def test_revert_undoes_a_settle_whose_commit_failed() -> None:
    led = ledger(BudgetRule("global", DAY, 1_000))
    reserve(led, "r1", 300)
    before = led.status(T0)
    change = settle(led, "r1", 280)
    led.revert(change)
    assert led.status(T0) == before
    assert settle(led, "r1", 290).entries  # reopened: the retry settles it
    assert by_scope(led) == {("global", DAY): (290, 0)}


def test_statuses_for_covers_the_scopes_one_decision_touches() -> None:
    led = ledger(*RULES)
    reserve(led, "r1", 50_000, task="T-1")
    got = [(s.scope, s.period, s.reserved_micros)
           for s in led.statuses_for(ALPHA, GPT5, "code", "T-1", T0)]
    assert got == [("global", DAY, 50_000), ("project:alpha", MONTH, 50_000),
                   ("provider:openai", WEEK, 50_000), ("task:T-1", TASK, 50_000)]


def _used(lines: tuple[BudgetLine, ...]) -> dict[str, int]:
    return {line.key: line.used_micros for line in lines}


def test_lines_of_models_under_the_same_budgets_are_one_answer_until_something_changes() -> None:
    led = ledger(BudgetRule("global", DAY, 50_000_000, 0.9, OnExceed.DOWNGRADE),
                 BudgetRule("provider:openai", DAY, 9_000_000, 0.9, OnExceed.REJECT),
                 BudgetRule("task", TASK, 1_100_000, 0.8, OnExceed.REJECT))
    other = ModelSpec("gpt-5-mini", "openai", 2, 250_000, 2_000_000, 400_000, 90, 0.8)
    first = led.lines(ALPHA, GPT5, "code", "t1", T0)
    assert led.lines(ALPHA, other, "code", "t1", T0) is first  # same rules, same keys
    assert _used(led.lines(ALPHA, HAIKU, "code", "t1", T0)) == {"global": 0, "task:t1": 0}
    assert reserve(led, "r1", 700, task="t1").ok
    # Each change is seen at once: the totals, another task, another moment, other rules.
    assert _used(led.lines(ALPHA, other, "code", "t1", T0)) == {
        "global": 700, "provider:openai": 700, "task:t1": 700}
    assert _used(led.lines(ALPHA, other, "code", "t2", T0)) == {
        "global": 700, "provider:openai": 700, "task:t2": 0}
    assert _used(led.lines(ALPHA, GPT5, "code", "t1", T0 + 86_400)) == {
        "global": 0, "provider:openai": 0, "task:t1": 700}
    settle(led, "r1", 500, task="t1")
    assert _used(led.lines(ALPHA, GPT5, "code", "t1", T0)) == {
        "global": 500, "provider:openai": 500, "task:t1": 500}
    led.replace_rules([BudgetRule("global", DAY, 50_000_000, 0.9, OnExceed.DOWNGRADE)])
    assert _used(led.lines(ALPHA, GPT5, "code", "t1", T0)) == {"global": 500}
    led.restore([])
    assert _used(led.lines(ALPHA, GPT5, "code", "t1", T0)) == {"global": 0}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_expiry_rounds_agree_with_a_plain_model_of_every_reservation(seed: int) -> None:
    # Expiry looks only at what is due (kept in expiry order); a plain model scans them all.
    rng = random.Random(seed)
    led = Ledger([BudgetRule("global", DAY, 10**12)], UTC, late_settle_s=3_000.0)
    model: dict[str, tuple[str, float, int]] = {}  # id -> (open | expired, expires_at, amount)
    now = T0
    for step in range(600):
        now += rng.uniform(0, 40)
        op = rng.random()
        if op < 0.45:
            rid, amount, ttl = f"r{step}", rng.randrange(1, 50), rng.choice([60.0, 300.0, 900.0])
            led.reserve(rid, ALPHA, GPT5, "code", f"t{step}", amount, now, now + ttl)
            model[rid] = ("open", now + ttl, amount)
        elif op < 0.65 and model:
            rid = rng.choice(sorted(model))
            settle(led, rid, 1, now, at=now)
            del model[rid]
        elif op < 0.75 and model:
            rid = rng.choice(sorted(model))
            if led.release(rid, now).closed:
                del model[rid]
        else:
            due = {rid for rid, (state, at, _) in model.items() if state == "open" and at <= now}
            change = led.expire(now)
            assert {rid for rid, _, _ in change.closed} == due
            reverted = rng.random() < 0.2  # its rows failed to commit: the expiries go back
            if reverted:
                led.revert(change)
            for rid, (state, at, amount) in list(model.items()):
                if rid in due and not reverted:
                    state = "expired"
                if state == "expired" and at <= now - 3_000.0:
                    del model[rid]  # too late for an outcome: forgotten
                else:
                    model[rid] = (state, at, amount)
        assert {r for r in model} == {f"r{i}" for i in range(step + 1) if led.holds(f"r{i}")}
        reserved = sum(a for state, _, a in model.values() if state == "open")
        assert by_scope(led, now).get(("global", DAY), (0, 0))[1] == reserved


def test_reservations_settled_before_their_expiry_do_not_pile_up_in_the_expiry_order() -> None:
    led = ledger(BudgetRule("global", DAY, 10**12))
    for i in range(20_000):
        reserve(led, f"r{i}", 1, now=T0 + i * 0.01)
        settle(led, f"r{i}", 1, T0 + i * 0.01, at=T0 + i * 0.01)
    assert not led.holds("r0")
    assert len(led._open_due) <= 1024 + 2  # rebuilt from what is held, not one per reserve
