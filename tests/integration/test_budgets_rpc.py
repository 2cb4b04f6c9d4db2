"""Budgets, outcomes and stats over a real server and a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar.storage.rows import DECISION_COLUMNS, decision_from_row
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

# 1000 input + 1000 output tokens at $1/$3 per Mtok = 4000 micro-USD a decision.
COST = 4000
JAN_31 = 1_769_860_800.0  # 2026-01-31T12:00:00Z


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = JAN_31) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


def small_config(tmp_path: Path, budgets: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "grace_period_s": 1},
        "store": {"path": str(tmp_path / "routing.db")},
        # No admin port: the default 127.0.0.1:9464 may be taken by another process.
        "telemetry": {"exporter": "none", "admin_listen": ""},
        "ledger": {"reservation_ttl_s": 60},
        "models": {
            "cheap": {"provider": "acme", "tier": 1, "input_per_mtok": 1.0,
                      "output_per_mtok": 3.0, "context_window": 100000, "tokens_per_s": 100,
                      "quality": 0.7},
            "pricey": {"provider": "bigco", "tier": 1, "input_per_mtok": 10.0,
                       "output_per_mtok": 30.0, "context_window": 100000, "tokens_per_s": 100,
                       "quality": 0.95},
        },
        "policies": {
            "only_cheap": {"models": ["cheap"], "fallbacks": 0},
            "best": {"objective": "quality", "models": ["pricey", "cheap"], "fallbacks": 1},
        },
        "default_policy": "only_cheap",
        "budgets": budgets,
    }


@pytest.fixture
async def make_sidecar(tmp_path: Path) -> AsyncIterator[Any]:
    cars: list[Sidecar] = []

    async def make(budgets: list[dict[str, Any]], clock: FakeClock | None = None) -> Sidecar:
        import yaml

        cfg = parse_config(yaml.safe_dump(small_config(tmp_path, budgets)), "test")
        car = Sidecar(cfg, clock=clock or FakeClock())
        await car.start()
        cars.append(car)
        return car

    yield make
    for car in cars:
        await car.stop()


def task(i: int, **kw: Any) -> pb.RouteRequest:
    kw.setdefault("labels", {"project": "alpha"})
    return pb.RouteRequest(task_id=f"t{i}", task_type="work", estimated_input_tokens=1000,
                           max_output_tokens=1000, **kw)


def scope(budgets: Any, name: str) -> pb.BudgetStatus:
    return next(b for b in budgets if b.scope == name)


async def test_200_concurrent_routes_against_a_budget_for_50(make_sidecar: Any) -> None:
    car = await make_sidecar([{"scope": "project:alpha", "period": "month",
                               "limit_usd": 50 * COST / 1e6, "on_exceed": "reject"}])
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        snapshots: list[pb.BudgetStatus] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                got = await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["project:alpha"]))
                snapshots.extend(got.budgets)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        decisions = await asyncio.gather(*(stub.Route(task(i)) for i in range(200)))
        done.set()
        await watcher
        final = scope((await stub.GetBudgetStatus(pb.BudgetQuery())).budgets, "project:alpha")
    routed = [d for d in decisions if d.status == pb.DECISION_STATUS_ROUTED]
    rejected = [d for d in decisions if d.status == pb.DECISION_STATUS_REJECTED]
    assert len(routed) == 50 and len(rejected) == 150
    assert {d.reason_code for d in rejected} == {pb.REASON_CODE_BUDGET_EXHAUSTED}
    assert "budget project:alpha/month exhausted" in rejected[0].alternatives[0].reason
    assert snapshots, "the watcher must have seen the ledger during the load"
    assert all(s.spent_micros + s.reserved_micros <= s.limit_micros for s in snapshots)
    assert (final.reserved_micros, final.remaining_micros) == (50 * COST, 0)
    assert final.state == pb.BUDGET_STATE_EXCEEDED


async def test_downgrade_budget_takes_the_cheaper_model(make_sidecar: Any) -> None:
    # Room for two pricey decisions (40000 each), then cheap ones.
    car = await make_sidecar([{"scope": "global", "period": "day", "limit_usd": 0.1,
                               "on_exceed": "downgrade"}])
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        got = [await stub.Route(task(i, policy="best")) for i in range(4)]
    assert [d.model for d in got] == ["pricey", "pricey", "cheap", "cheap"]
    assert got[2].reason_code == pb.REASON_CODE_DOWNGRADED
    assert "Downgraded from pricey" in got[2].reason


async def test_reject_budget_refuses_rather_than_downgrades(make_sidecar: Any) -> None:
    car = await make_sidecar([{"scope": "model:pricey", "period": "day", "limit_usd": 0.05,
                               "on_exceed": "reject"}])
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        first = await stub.Route(task(1, policy="best"))
        second = await stub.Route(task(2, policy="best"))
    assert first.model == "pricey"
    assert second.status == pb.DECISION_STATUS_REJECTED
    assert second.reason_code == pb.REASON_CODE_BUDGET_EXHAUSTED


def attempt(model: str = "cheap", **kw: Any) -> pb.Attempt:
    kw.setdefault("status", pb.ATTEMPT_STATUS_SUCCESS)
    kw.setdefault("input_tokens", 1000)
    kw.setdefault("output_tokens", 500)
    kw.setdefault("duration", Duration(seconds=1))
    return pb.Attempt(model=model, **kw)


async def test_settle_expire_and_dry_run_move_the_ledger_exactly(make_sidecar: Any) -> None:
    clock = FakeClock()
    car = await make_sidecar([{"scope": "global", "period": "month", "limit_usd": 10}], clock)
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)

        async def glob() -> pb.BudgetStatus:
            return scope((await stub.GetBudgetStatus(pb.BudgetQuery())).budgets, "global")

        dry = await stub.Route(task(0, dry_run=True))
        assert dry.dry_run and dry.status == pb.DECISION_STATUS_ROUTED
        g = await glob()
        assert (g.spent_micros, g.reserved_micros) == (0, 0)

        d1 = await stub.Route(task(1))
        d2 = await stub.Route(task(2))
        g = await glob()
        assert (g.spent_micros, g.reserved_micros) == (0, 2 * COST)

        # Settled at the actual cost from catalog prices: 1000 in + 500 out = 2500.
        ack = await stub.ReportOutcome(pb.Outcome(decision_id=d1.decision_id,
                                                  attempts=[attempt()], success=True))
        assert (ack.actual_cost_micros, ack.duplicate) == (2500, False)
        g = await glob()
        assert (g.spent_micros, g.reserved_micros) == (2500, COST)

        again = await stub.ReportOutcome(pb.Outcome(decision_id=d1.decision_id,
                                                    attempts=[attempt()], success=True))
        assert again.duplicate
        assert (await glob()).spent_micros == 2500

        clock.t += 61  # past the reservation TTL
        await car.upkeep.expire_once()
        g = await glob()
        assert (g.spent_micros, g.reserved_micros) == (2500, 0)

        # A late outcome for the expired reservation still charges what was spent.
        late = await stub.ReportOutcome(pb.Outcome(
            decision_id=d2.decision_id, attempts=[attempt(cost_micros=777)], success=True))
        assert late.actual_cost_micros == 777
        assert (await glob()).spent_micros == 2500 + 777

        dry_ack = await stub.ReportOutcome(pb.Outcome(decision_id=dry.decision_id,
                                                      attempts=[attempt()], success=True))
        assert not dry_ack.duplicate
        assert (await glob()).spent_micros == 2500 + 777


async def test_period_rollover_starts_a_fresh_period(make_sidecar: Any) -> None:
    clock = FakeClock()
    car = await make_sidecar([{"scope": "global", "period": "month",
                               "limit_usd": 2 * COST / 1e6}], clock)
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        assert (await stub.Route(task(1))).status == pb.DECISION_STATUS_ROUTED
        assert (await stub.Route(task(2))).status == pb.DECISION_STATUS_ROUTED
        assert (await stub.Route(task(3))).status == pb.DECISION_STATUS_REJECTED
        jan = scope((await stub.GetBudgetStatus(pb.BudgetQuery())).budgets, "global")
        clock.t += 86_400  # 2026-02-01T12:00Z: a new month
        assert (await stub.Route(task(4))).status == pb.DECISION_STATUS_ROUTED
        feb = scope((await stub.GetBudgetStatus(pb.BudgetQuery())).budgets, "global")
    assert feb.period_start.seconds > jan.period_start.seconds
    assert feb.period_start.seconds == jan.period_end.seconds
    assert feb.reserved_micros == COST


@pytest.mark.parametrize(
    ("outcome", "field"),
    [
        (pb.Outcome(decision_id="", attempts=[]), "decision_id"),
        (pb.Outcome(decision_id="X", attempts=[attempt(input_tokens=-1)]),
         "attempts[0].input_tokens"),
        (pb.Outcome(decision_id="X", attempts=[attempt(status=9)]), "attempts[0].status"),
        (pb.Outcome(decision_id="X", attempts=[attempt(status=0)]), "attempts[0].status"),
        (pb.Outcome(decision_id="X", attempts=[attempt(), attempt("gpt-9")]),
         "attempts[1].model"),
        (pb.Outcome(decision_id="X", attempts=[attempt(provider="nope")]),
         "attempts[0].provider"),
        (pb.Outcome(decision_id="X", attempts=[attempt(cost_micros=-3)]),
         "attempts[0].cost_micros"),
        (pb.Outcome(decision_id="X", attempts=[attempt(duration=Duration(seconds=-1))]),
         "attempts[0].duration"),
        (pb.Outcome(decision_id="X", attempts=[attempt()], quality=1.5), "quality"),
    ],
)
async def test_bad_outcome_names_the_field_and_writes_nothing(
    make_sidecar: Any, tmp_path: Path, outcome: pb.Outcome, field: str
) -> None:
    car = await make_sidecar([{"scope": "global", "period": "month", "limit_usd": 10}])
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        d = await stub.Route(task(1))
        if outcome.decision_id == "X":
            outcome.decision_id = d.decision_id
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ReportOutcome(outcome)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(f"{field}:"), err.value.details()
        g = scope((await stub.GetBudgetStatus(pb.BudgetQuery())).budgets, "global")
        assert (g.spent_micros, g.reserved_micros) == (0, COST)
    db = sqlite3.connect(tmp_path / "routing.db")
    try:
        assert db.execute("select count(*) from model_selections").fetchone() == (0,)
        assert db.execute("select count(*) from decision_outcomes").fetchone() == (0,)
    finally:
        db.close()


async def test_unknown_decision_is_not_found(make_sidecar: Any) -> None:
    car = await make_sidecar([])
    async with grpc.aio.insecure_channel(car.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.RouterStub(ch).ReportOutcome(
                pb.Outcome(decision_id="feedbeef", attempts=[attempt()]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_routing_stats_matrix_and_providers(make_sidecar: Any) -> None:
    car = await make_sidecar([])
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        for i in range(3):
            d = await stub.Route(task(i, labels={"project": "alpha", "layer": "api"}))
            attempts = [attempt(status=pb.ATTEMPT_STATUS_TIMEOUT), attempt()] if i == 0 else [
                attempt()]
            await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, attempts=attempts,
                                                success=True))
        stats = await stub.GetRoutingStats(pb.StatsQuery(hours=1, label_keys=["layer"]))
    cells = {(c.model, c.dimension, c.value): c for c in stats.cells}
    assert cells[("cheap", "task_type", "work")].decisions == 3
    assert cells[("cheap", "label:layer", "api")].decisions == 3
    assert cells[("cheap", "task_type", "work")].estimated_cost_micros_per_decision == COST
    acme = next(p for p in stats.providers if p.provider == "acme")
    assert acme.decisions == 3
    assert acme.fallback_rate == pytest.approx(1 / 3)
    assert acme.error_rate == pytest.approx(1 / 4)
    assert acme.spend_micros == 4 * 2500
    assert acme.blended_cost_micros_per_mtok == 4 * 2500 * 1_000_000 // (4 * 1500)


async def test_decision_is_audited_before_it_is_answered(
    make_sidecar: Any, tmp_path: Path
) -> None:
    car = await make_sidecar([])
    async with grpc.aio.insecure_channel(car.address) as ch:
        d = await pb_grpc.RouterStub(ch).Route(task(1, labels={"project": "alpha"}))
    db = sqlite3.connect(tmp_path / "routing.db")
    try:
        row = db.execute(f"select {', '.join(DECISION_COLUMNS)} from "
                         "model_routing_decisions where decision_id = ?",
                         (d.decision_id,)).fetchone()
    finally:
        db.close()
    # Read from the file by a connection of its own, decoded as the store decodes it.
    rec = decision_from_row(row)
    assert (rec.task_id, rec.chosen_model, rec.policy, rec.reason) == (
        "t1", "cheap", "only_cheap", d.reason)


async def test_each_attempt_is_charged_to_its_own_model_and_provider(make_sidecar: Any) -> None:
    budgets = [{"scope": s, "period": "month", "limit_usd": 10}
               for s in ("global", "provider:acme", "provider:bigco", "model:pricey")]
    car = await make_sidecar(budgets)
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        d = await stub.Route(task(1))  # only_cheap: cheap on acme, reserved there
        assert d.model == "cheap"
        # cheap timed out after spending 100; the caller fell back to pricey on bigco.
        await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, success=True, attempts=[
            attempt("cheap", status=pb.ATTEMPT_STATUS_TIMEOUT, cost_micros=100),
            attempt("pricey", cost_micros=900),
        ]))
        again = await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, success=True,
                                                    attempts=[attempt("pricey", cost_micros=5)]))
        assert again.duplicate
        got = {b.scope: b for b in (await stub.GetBudgetStatus(pb.BudgetQuery())).budgets}
    assert {s: (got[s].spent_micros, got[s].reserved_micros) for s in got} == {
        "global": (1000, 0),
        "provider:acme": (100, 0),
        "provider:bigco": (900, 0),
        "model:pricey": (900, 0),
    }


async def test_decisions_past_retention_are_pruned(make_sidecar: Any, tmp_path: Path) -> None:
    clock = FakeClock()
    car = await make_sidecar([], clock)
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        old = await stub.Route(task(1))
        await stub.ReportOutcome(pb.Outcome(decision_id=old.decision_id, attempts=[attempt()]))
        clock.t += 31 * 86_400  # past the default 30 days of retention
        fresh = await stub.Route(task(2))
        assert await car.upkeep.prune_once() == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ReportOutcome(pb.Outcome(decision_id=old.decision_id,
                                                attempts=[attempt()]))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    db = sqlite3.connect(tmp_path / "routing.db")
    try:
        kept = db.execute("SELECT decision_id FROM model_routing_decisions").fetchall()
        attempts = db.execute("SELECT COUNT(*) FROM model_selections").fetchone()
    finally:
        db.close()
    assert kept == [(fresh.decision_id,)]
    assert attempts == (0,)


async def test_the_32_million_dollar_outcome_is_refused_and_every_budget_untouched(
    make_sidecar: Any, tmp_path: Path,
) -> None:
    # A ReportOutcome for a cheap decision carrying 32 attempts of another model at $1M each
    # once charged $32M to global, the project and a provider the decision never touched.
    car = await make_sidecar([{"scope": "global", "period": "month", "limit_usd": 10},
                              {"scope": "project:alpha", "period": "month", "limit_usd": 10},
                              {"scope": "provider:*", "period": "month", "limit_usd": 10}])
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        d = await stub.Route(task(1))
        before = (await stub.GetBudgetStatus(pb.BudgetQuery())).budgets
        absurd = pb.Outcome(decision_id=d.decision_id, success=True, attempts=[
            attempt("pricey", cost_micros=10**12) for _ in range(32)])
        one = pb.Outcome(decision_id=d.decision_id, success=True,
                         attempts=[attempt("pricey", cost_micros=10**12)])
        for outcome, field in ((absurd, "attempts"), (one, "attempts[0].cost_micros")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ReportOutcome(outcome)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith(f"{field}:"), err.value.details()
        assert (await stub.GetBudgetStatus(pb.BudgetQuery())).budgets == before
        # The real outcome is still accepted afterwards: nothing was recorded for the decision.
        ack = await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, success=True,
                                                  attempts=[attempt()]))
        assert not ack.duplicate and ack.actual_cost_micros == 2_500


async def test_spend_reported_for_a_rejected_decision_is_charged(make_sidecar: Any) -> None:
    # The router refused; the orchestrator called a model anyway. The money was spent, so the
    # budgets count it (the attempt is off the decision's plan, which the audit row flags).
    budgets = [{"scope": s, "period": "month", "limit_usd": 10}
               for s in ("global", "provider:acme")]
    car = await make_sidecar(budgets)
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        d = await stub.Route(task(1, requires=pb.Requirements(capabilities=["teleportation"])))
        assert d.status == pb.DECISION_STATUS_REJECTED
        ack = await stub.ReportOutcome(pb.Outcome(
            decision_id=d.decision_id, success=True, attempts=[attempt("cheap", cost_micros=70)]))
        assert (ack.duplicate, ack.actual_cost_micros) == (False, 70)
        got = {b.scope: b for b in (await stub.GetBudgetStatus(pb.BudgetQuery())).budgets}
    assert {s: (got[s].spent_micros, got[s].reserved_micros) for s in got} == {
        "global": (70, 0), "provider:acme": (70, 0)}


async def test_a_budget_query_names_scopes_as_requests_do(make_sidecar: Any) -> None:
    # Label values are folded into budget scopes, so a query for project:ALPHA is alpha's.
    car = await make_sidecar([{"scope": "project:alpha", "period": "month", "limit_usd": 10}])
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        d = await stub.Route(task(1, labels={"project": "ALPHA"}))
        asked = await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["project:ALPHA"]))
    assert [(b.scope, b.reserved_micros) for b in asked.budgets] == [
        ("project:alpha", d.estimated_cost_micros)]
