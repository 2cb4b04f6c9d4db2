"""HealthBook: windows, EWMAs, circuit breakers, detection, demotion, snapshot/restore."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from routing_sidecar.config import parse_config
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.core.decide import decide
from routing_sidecar.core.health import (
    BreakerChange,
    BreakerStatus,
    Detection,
    HealthBook,
    PerfRow,
    Scope,
    clock,
)
from routing_sidecar.core.view import DecisionView
from routing_sidecar.domain import (
    Attempt,
    AttemptStatus,
    ModelSpec,
    Objective,
    Policy,
    Rejection,
    Task,
    TierRules,
)
from routing_sidecar.errors import ConfigError
from routing_sidecar.settings import (
    BreakerSettings,
    DemotionSettings,
    DetectionSettings,
    HealthSettings,
)
from tests.unit.conftest import spec

OK, TRANSIENT, PERMANENT, TIMEOUT, LIMITED = (
    AttemptStatus.SUCCESS, AttemptStatus.TRANSIENT_ERROR, AttemptStatus.PERMANENT_ERROR,
    AttemptStatus.TIMEOUT, AttemptStatus.RATE_LIMITED,
)
T0 = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC).timestamp()
M1 = spec("m1", "p", tps=100)
M2 = spec("m2", "p", tps=100)
Q1 = spec("q1", "q", tps=100)
CLOSED, OPEN, HALF = BreakerStatus.CLOSED, BreakerStatus.OPEN, BreakerStatus.HALF_OPEN


def book(**breaker: float) -> HealthBook:
    b = BreakerSettings(**{"consecutive_failures": 3, "min_volume": 100, **breaker})
    return HealthBook(HealthSettings(breaker=b))


def att(model: ModelSpec = M1, status: AttemptStatus = OK, *, duration: float = 1.0,
        out: int = 100, retry_after: float | None = None) -> Attempt:
    return Attempt(model.name, model.provider, status, duration_s=duration, output_tokens=out,
                   retry_after_s=retry_after)


def feed(hb: HealthBook, statuses: Sequence[AttemptStatus], model: ModelSpec = M1,
         now: float = T0, step: float = 0.0) -> float:
    for s in statuses:
        hb.record(att(model, s), now)
        now += step
    return now


def state(hb: HealthBook, now: float, key: str = "model:m1") -> BreakerStatus:
    return hb.breaker(key, now).status


# -- circuit breaker ----------------------------------------------------------------------

@pytest.mark.parametrize("failure", [TRANSIENT, PERMANENT, TIMEOUT, LIMITED])
def test_consecutive_failures_open_the_breaker_for_the_cooldown(failure: AttemptStatus) -> None:
    hb = book(cooldown_s=30)
    feed(hb, [failure, failure])
    assert state(hb, T0) is CLOSED and hb.blocked(M1, T0) is None
    feed(hb, [failure])
    assert hb.breaker("model:m1", T0).open_until == T0 + 30
    for now in (T0, T0 + 29.9):
        assert hb.blocked(M1, now) == "circuit open until 12:00:30Z"
    assert state(hb, T0 + 29.9) is OPEN
    assert state(hb, T0 + 30) is HALF
    assert hb.blocked(M2, T0) is None  # a sibling on the same provider is untouched


def test_a_success_resets_the_consecutive_count() -> None:
    hb = book()
    feed(hb, [TRANSIENT, TRANSIENT, OK, TRANSIENT, TRANSIENT])
    assert state(hb, T0) is CLOSED
    assert hb.breaker("model:m1", T0).consecutive_failures == 2


@pytest.mark.parametrize(
    ("probe", "status", "open_until"),
    [(OK, CLOSED, None), (TIMEOUT, OPEN, T0 + 30 + 60)],  # a failed probe doubles the cooldown
)
def test_half_open_lets_exactly_one_probe(
    probe: AttemptStatus, status: BreakerStatus, open_until: float | None
) -> None:
    hb = book(cooldown_s=30)
    feed(hb, [TRANSIENT] * 3)
    now = T0 + 30
    assert hb.blocked(M1, now) is None
    hb.on_routed(M1, now)
    assert hb.breaker("model:m1", now).probe_in_flight
    assert hb.blocked(M1, now + 1) == "circuit half-open, probe in flight"
    hb.on_routed(M1, now + 1)  # a second routing does not claim another probe
    hb.record(att(M1, probe), now)
    got = hb.breaker("model:m1", now)
    assert (got.status, got.open_until) == (status, open_until)
    assert (hb.blocked(M1, now) is None) is (status is CLOSED)


def test_repeated_failed_probes_back_off_up_to_the_max_cooldown() -> None:
    hb = book(cooldown_s=30, max_cooldown_s=100)
    now = feed(hb, [TRANSIENT] * 3)
    cooldowns = []
    for _ in range(4):
        until = hb.breaker("model:m1", now).open_until
        assert until is not None
        cooldowns.append(until - now)
        now = until
        hb.on_routed(M1, now)
        hb.record(att(M1, TRANSIENT), now)
    assert cooldowns == [30, 60, 100, 100]
    hb.record(att(M1, OK), now + 100)  # the probe that finally succeeds resets the backoff
    assert hb.breaker("model:m1", now + 100).trips == 0


def test_a_lost_probe_is_given_back_after_the_probe_timeout() -> None:
    hb = book(cooldown_s=30, probe_timeout_s=10)
    feed(hb, [TRANSIENT] * 3)
    hb.on_routed(M1, T0 + 30)
    assert hb.blocked(M1, T0 + 39) is not None
    assert hb.blocked(M1, T0 + 40) is None
    hb.on_routed(M1, T0 + 40)
    assert hb.blocked(M1, T0 + 41) is not None


def test_a_success_while_open_does_not_close_the_breaker() -> None:
    hb = book()
    feed(hb, [TRANSIENT] * 3)
    hb.record(att(M1, OK), T0 + 1)  # an attempt that started before the trip
    assert state(hb, T0 + 1) is OPEN


@pytest.mark.parametrize(
    ("retry_after", "cooldown"),
    [
        (120.0, 120.0),   # honoured beyond the cooldown
        (5.0, 30.0),      # never shorter than the cooldown
        (1000.0, 300.0),  # capped at max_cooldown_s
    ],
)
def test_rate_limited_retry_after_opens_at_once(retry_after: float, cooldown: float) -> None:
    hb = book(cooldown_s=30, max_cooldown_s=300)
    hb.record(att(M1, LIMITED, retry_after=retry_after), T0)
    assert hb.breaker("model:m1", T0).open_until == T0 + cooldown
    assert hb.blocked(M1, T0) == f"circuit open until {clock(T0 + cooldown)}"
    assert state(hb, T0, "provider:p") is CLOSED  # retry-after is the model's, not the provider's


def test_retry_after_while_open_extends_the_breaker() -> None:
    hb = book(cooldown_s=30)
    feed(hb, [TRANSIENT] * 3)
    hb.record(att(M1, LIMITED, retry_after=90), T0 + 10)
    assert hb.breaker("model:m1", T0 + 10).open_until == T0 + 100


def test_retry_after_is_ignored_on_other_statuses() -> None:
    hb = book()
    hb.record(att(M1, TRANSIENT, retry_after=60), T0)
    assert state(hb, T0) is CLOSED


@pytest.mark.parametrize(
    ("min_volume", "attempts", "opens"),
    [
        (10, 8, False),   # 50% errors, but below the minimum volume
        (10, 10, True),   # the tenth attempt brings the volume up: trips
        (4, 4, True),
        (100, 60, False),
    ],
)
def test_error_rate_trips_only_with_the_minimum_volume(
    min_volume: int, attempts: int, opens: bool
) -> None:
    hb = book(consecutive_failures=50, error_rate=0.5, min_volume=min_volume)
    feed(hb, [OK, TRANSIENT] * (attempts // 2))
    assert (state(hb, T0) is OPEN) is opens


def test_error_rate_below_threshold_never_trips() -> None:
    hb = book(consecutive_failures=50, error_rate=0.5, min_volume=10)
    feed(hb, [OK, OK, TRANSIENT] * 30)
    assert state(hb, T0) is CLOSED


def test_error_rate_window_decays_old_volume() -> None:
    # The same 10 attempts spread over many windows never reach the minimum volume.
    hb = HealthBook(HealthSettings(window_s=10, breaker=BreakerSettings(
        consecutive_failures=50, min_volume=10)))
    feed(hb, [OK, TRANSIENT] * 5, step=30.0)
    assert state(hb, T0 + 300) is CLOSED


def test_provider_breaker_needs_failures_across_models() -> None:
    hb = book(cooldown_s=30)
    feed(hb, [TRANSIENT] * 3, model=M1)
    assert state(hb, T0, "provider:p") is CLOSED  # one broken model: only its own breaker
    hb = book(cooldown_s=30)
    for m in (M1, M2, M1):
        hb.record(att(m, TRANSIENT), T0)
    assert state(hb, T0, "provider:p") is OPEN
    assert hb.blocked(M2, T0) == "circuit open until 12:00:30Z (provider p)"
    assert hb.blocked(Q1, T0) is None


def test_breaker_key_must_name_a_scope() -> None:
    with pytest.raises(ValueError, match="model:NAME"):
        book().breaker("m1", T0)
    assert book().breaker("model:never-seen", T0).status is CLOSED


def test_clock_formats_utc_and_rounds_up() -> None:
    assert clock(T0 + 3 * 60 + 10) == "12:03:10Z"
    assert clock(T0 + 0.2) == "12:00:01Z"


def breakers(hb: HealthBook, now: float, *models: ModelSpec) -> DecisionView:
    """The view's breaker map, as the service builds it."""
    return DecisionView(breakers={m.name: why for m in models
                                  if (why := hb.blocked(m, now)) is not None})


def test_an_open_breaker_takes_the_model_out_of_the_decision() -> None:
    cat = Catalog.build((M1, Q1), (Policy("main", ("m1", "q1")),), (), (), TierRules(), "main")
    task = Task("t", "job", objective=Objective.COST_SPEED)
    hb = book(cooldown_s=30)
    assert decide(task, cat, breakers(hb, T0, M1, Q1)).chosen.model == "m1"  # type: ignore[union-attr]
    feed(hb, [TIMEOUT] * 3)
    sel = decide(task, cat, breakers(hb, T0, M1, Q1))
    assert sel.chosen is not None and sel.chosen.model == "q1"
    (m1,) = [a for a in sel.alternatives if a.model == "m1"]
    assert (m1.rejection, m1.reason) == (Rejection.CIRCUIT_OPEN, "circuit open until 12:00:30Z")


# -- detection ------------------------------------------------------------------------------

def _det_book() -> HealthBook:
    return HealthBook(HealthSettings(
        breaker=BreakerSettings(consecutive_failures=100, min_volume=1000),
        detection=DetectionSettings(elevated_fallback_rate=0.2, degraded_error_rate=0.3,
                                  idle_after_s=600, min_volume=5),
    ))


@pytest.mark.parametrize(
    ("outcomes", "later", "expected"),
    [
        ([(OK, False)] * 10, 0, Detection.HEALTHY),
        ([(OK, False)] * 8 + [(TRANSIENT, True)] * 2, 0, Detection.ELEVATED_FALLBACK),
        ([(OK, False)] * 9 + [(TRANSIENT, True)], 0, Detection.HEALTHY),  # 10% < 20%
        ([(OK, False)] * 6 + [(TIMEOUT, False)] * 4, 0, Detection.DEGRADED),
        ([(TRANSIENT, True)] * 3, 0, Detection.HEALTHY),  # below the minimum volume
        ([(OK, False)] * 10, 600, Detection.IDLE),
        ([(OK, False)] * 10, 599, Detection.HEALTHY),
    ],
)
def test_detection_per_provider_and_lane(
    outcomes: list[tuple[AttemptStatus, bool]], later: float, expected: Detection
) -> None:
    hb = _det_book()
    for status, fell_back in outcomes:
        hb.record(att(M1, status), T0, lane="batch", fell_back=fell_back)
    got = hb.detection(T0 + later)
    assert got == {"provider:p": expected, "lane:batch": expected}


def test_detection_lists_unseen_names_as_idle_and_open_provider_as_degraded() -> None:
    hb = book(cooldown_s=30)
    for m in (M1, M2, M1):
        hb.record(att(m, TRANSIENT), T0)
    got = hb.detection(T0 + 1, providers=["q"], lanes=["interactive"])
    assert got == {"provider:p": Detection.DEGRADED, "provider:q": Detection.IDLE,
                   "lane:interactive": Detection.IDLE}
    # Still degraded long after, while no probe has closed the breaker.
    assert hb.detection(T0 + 10_000)["provider:p"] is Detection.DEGRADED


def test_record_outcome_marks_attempts_that_fell_back() -> None:
    hb = _det_book()
    for _ in range(5):
        hb.record_outcome([att(M1, TRANSIENT), att(M1, TIMEOUT), att(Q1, OK)], T0, lane="L")
    rows = {(r.scope, r.name): r for r in hb.stats(T0)}
    assert rows[Scope.MODEL, "m1"].fallback_rate == 1.0
    assert rows[Scope.MODEL, "q1"].fallback_rate == 0.0
    assert rows[Scope.LANE, "L"].fallback_rate == pytest.approx(2 / 3)
    # A retry on the same model that then succeeds is not a fall-back.
    hb = _det_book()
    hb.record_outcome([att(M1, TRANSIENT), att(M1, OK)], T0)
    assert {(r.scope, r.name): r.fallback_rate for r in hb.stats(T0)}[Scope.MODEL, "m1"] == 0.0


# -- stats ----------------------------------------------------------------------------------

def test_stats_rows_hold_ewmas_rates_and_breakers() -> None:
    hb = HealthBook(HealthSettings(ewma_alpha=0.5, breaker=BreakerSettings(consecutive_failures=9)))
    hb.record(att(M1, OK, duration=2.0, out=200), T0)   # 100 tok/s
    hb.record(att(M1, OK, duration=1.0, out=50), T0)    # 50 tok/s
    hb.record(att(M1, TIMEOUT, duration=30.0), T0)      # failures feed no latency
    hb.record(att(M1, LIMITED), T0)
    rows = {(r.scope, r.name): r for r in hb.stats(T0)}
    assert set(rows) == {(Scope.MODEL, "m1"), (Scope.PROVIDER, "p")}
    m = rows[Scope.MODEL, "m1"]
    assert (m.volume, m.success_rate, m.timeout_rate, m.rate_limited_rate, m.transient_rate,
            m.permanent_rate) == (4.0, 0.5, 0.25, 0.25, 0.0, 0.0)
    assert (m.latency_ewma_s, m.tokens_per_s) == (1.5, 75.0)
    assert (m.breaker, m.detection, m.last_seen) == (CLOSED, None, T0)
    assert rows[Scope.PROVIDER, "p"].detection is Detection.HEALTHY
    later = {(r.scope, r.name): r for r in hb.stats(T0 + 300)}[Scope.MODEL, "m1"]
    assert later.volume == pytest.approx(4.0 / 2.718281828, rel=1e-6)  # one window later
    assert later.success_rate == 0.5  # rates do not decay


# -- demotion -------------------------------------------------------------------------------

def _pen_book() -> HealthBook:
    return HealthBook(HealthSettings(window_s=300, breaker=BreakerSettings(
        consecutive_failures=1000, min_volume=1000), demotion=DemotionSettings(
        error_weight=0.5, slowness_weight=0.2, evidence=10, max_penalty=0.5)))


def test_penalty_grows_with_evidence_and_recovers() -> None:
    hb = _pen_book()
    assert hb.penalty(M1, T0) == 0.0
    seen = []
    for _ in range(4):
        feed(hb, [OK, TRANSIENT] * 5)
        seen.append(hb.penalty(M1, T0))
    # Same 50% error rate, more evidence each time: 0.5 * 0.5 * n / (n + 10).
    assert seen == pytest.approx([0.25 * n / (n + 10) for n in (10, 20, 30, 40)])
    feed(hb, [OK] * 40)  # recovering: successes dilute the error rate
    assert hb.penalty(M1, T0) < seen[0]
    assert hb.penalty(M1, T0 + 3000) < 0.001  # and old evidence ages out


def test_penalty_for_slowness_against_the_catalog() -> None:
    hb = _pen_book()
    for _ in range(10):
        hb.record(att(M1, OK, duration=2.0, out=100), T0)  # 50 tok/s vs the catalog's 100
    assert hb.penalty(M1, T0) == pytest.approx(0.2 * 0.5 * 10 / 20)
    fast = spec("m1", "p", tps=40)  # a catalog that expects less sees no slowness
    assert hb.penalty(fast, T0) == 0.0


def test_penalty_is_capped() -> None:
    hb = _pen_book()
    feed(hb, [TRANSIENT] * 10_000)
    assert hb.penalty(M1, T0) == 0.5 * 10_000 / 10_010
    hb.record(att(M1, OK, duration=100.0, out=1), T0)
    assert hb.penalty(M1, T0) == 0.5


def test_penalty_demotes_in_the_decision_and_the_model_regains_its_place() -> None:
    cheap = spec("cheap", "a", inp=1.0, out=5.0)
    pricier = spec("pricier", "b", inp=1.2, out=6.0)
    cat = Catalog.build((cheap, pricier), (Policy("main", ("cheap", "pricier")),), (), (),
                        TierRules(), "main")
    task = Task("t", "job", objective=Objective.BALANCED, estimated_input_tokens=1000)
    hb = _pen_book()

    def pick(now: float) -> str:
        view = DecisionView(penalties={m.name: hb.penalty(m, now) for m in (cheap, pricier)})
        sel = decide(task, cat, view)
        assert sel.chosen is not None
        return sel.chosen.model

    assert pick(T0) == "cheap"
    feed(hb, [TRANSIENT] * 3, model=cheap)
    assert pick(T0) == "pricier"
    assert pick(T0 + 3000) == "cheap"  # the failures aged out of the window


# -- persistence ----------------------------------------------------------------------------

def test_snapshot_restore_round_trips_exactly() -> None:
    hb = book(cooldown_s=30)
    hb.record(att(M1, OK, duration=2.0, out=300), T0, lane="batch")
    for m in (M2, M1, M2):
        hb.record(att(m, TRANSIENT), T0 + 5, lane="batch", fell_back=True)
    hb.record(att(Q1, LIMITED, retry_after=90), T0 + 7)
    hb.on_routed(M2, T0 + 40)
    rows = hb.snapshot()
    assert all(isinstance(r, PerfRow) for r in rows)
    again = book(cooldown_s=30)
    again.restore(rows)
    assert again.snapshot() == rows
    for now in (T0 + 10, T0 + 40, T0 + 200):
        assert again.stats(now) == hb.stats(now)
        assert again.detection(now) == hb.detection(now)
        for m in (M1, M2, Q1):
            assert again.blocked(m, now) == hb.blocked(m, now)
            assert again.penalty(m, now) == hb.penalty(m, now)
    again.restore([])
    assert again.snapshot() == [] and again.stats(T0) == []


def test_restore_skips_unknown_scopes() -> None:
    hb = book()
    hb.restore([PerfRow("galaxy", "x", T0), PerfRow("model", "m1", T0, attempts=1.0)])
    assert [(r.scope, r.name) for r in hb.snapshot()] == [("model", "m1")]


# -- config ---------------------------------------------------------------------------------

def test_health_config_defaults_and_cross_check() -> None:
    base = """
models: {m: {provider: p, tier: 1, input_per_mtok: 1, output_per_mtok: 1,
             context_window: 1000, tokens_per_s: 10, quality: 0.5}}
policies: {main: {models: [m]}}
default_policy: main
"""
    cfg = parse_config(base)
    settings = cfg.settings()
    assert settings.health == HealthSettings() and settings.critical_lanes == frozenset()
    with pytest.raises(ConfigError, match=r"health\.breaker\.cooldown_s: 400 is above"):
        parse_config(base + "health: {breaker: {cooldown_s: 400}}\n")
    with pytest.raises(ConfigError, match=r"health\.breaker\.treshold"):
        parse_config(base + "health: {breaker: {treshold: 1}}\n")


def test_a_cancelled_attempt_is_no_evidence_against_the_model() -> None:
    hb = book()
    for _ in range(5):
        hb.record(att(M1, AttemptStatus.CANCELLED), T0)
    assert hb.blocked(M1, T0) is None and hb.snapshot() == []


# -- the fleet ------------------------------------------------------------------------------

def test_opening_and_closing_are_drained_for_the_fleet() -> None:
    hb = book(cooldown_s=30)
    feed(hb, [TIMEOUT] * 3)
    [opened] = hb.drain_changes()
    assert (opened.scope, opened.name, opened.opened, opened.open_until) == (
        "model", "m1", True, T0 + 30)
    assert hb.drain_changes() == []
    hb.on_routed(M1, T0 + 31)  # the probe
    hb.record(att(M1, OK), T0 + 32)
    assert [(c.name, c.opened) for c in hb.drain_changes()] == [("m1", False)]


def test_a_remote_open_blocks_here_and_leaves_the_probe_to_its_owner() -> None:
    here = book(cooldown_s=30, probe_timeout_s=60)
    here.apply_remote(BreakerChange("model", "m1", True, T0 + 30, 1), T0)
    assert here.blocked(M1, T0 + 10) == "circuit open until 12:00:30Z"
    assert here.blocked(M1, T0 + 31) == "circuit half-open, probe in flight"  # not ours
    assert here.blocked(M1, T0 + 30 + 60) is None  # its owner never answered: ours to try
    here.apply_remote(BreakerChange("model", "m1", False), T0 + 40)
    assert here.blocked(M1, T0 + 40) is None and here.breaker("model:m1", T0 + 40).status is CLOSED


def test_a_remote_open_never_shortens_a_local_one() -> None:
    hb = book(cooldown_s=30)
    feed(hb, [TIMEOUT] * 3)
    hb.drain_changes()
    hb.apply_remote(BreakerChange("model", "m1", True, T0 + 5, 1), T0 + 1)
    assert hb.blocked(M1, T0 + 20) == "circuit open until 12:00:30Z"
    assert hb.drain_changes() == []  # what came from the fleet is not sent back
