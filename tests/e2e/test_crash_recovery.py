"""kill -9 under load, then restart: nothing acknowledged is lost and the ledger adds up.

A real `routing-sidecar serve` process takes concurrent Route and ReportOutcome calls and is
killed with SIGKILL while calls are in flight. A new process on the same database must then hold
every decision and outcome the client saw acknowledged, and its in-memory budget totals (read
over gRPC) must equal what the persisted ledger rows add up to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict, free_port, write_config
from tests.e2e.test_process import BIN, wait_serving

WORKERS = 16
LOAD_S = 1.5  # kill after this long under load ...
MAX_ACKS = 1000  # ... or after this many acknowledged decisions, whichever comes first
MIN_DECISIONS = 50  # the test must not pass vacuously
MIN_OUTCOMES = 10
HARD_DEADLINE_S = 30.0  # a slow machine may take longer than LOAD_S to reach the minimums
RPC_TIMEOUT_S = 10.0
INPUT_TOKENS, OUTPUT_TOKENS = 1000, 500
REPORTED_OUTPUT_TOKENS = 400

PERIOD_NAME = {pb.BUDGET_PERIOD_DAY: "day", pb.BUDGET_PERIOD_WEEK: "week",
               pb.BUDGET_PERIOD_MONTH: "month"}


# -- the server process ------------------------------------------------------------------------


@dataclass
class Server:
    target: str
    proc: subprocess.Popen[bytes]
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def start_server(config: Path, log: Path) -> Server:
    target = f"127.0.0.1:{free_port()}"
    # Logs go to a file: a pipe nobody reads could fill and stall the server under load.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--config", str(config), "--listen", target],
            stdout=out, stderr=subprocess.STDOUT,
        )
    server = Server(target, proc, log)
    try:
        wait_serving(target, proc)
    except AssertionError as exc:
        stop(server)
        raise AssertionError(f"{exc}\n--- sidecar log ---\n{server.logs()}") from None
    return server


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.proc.wait(timeout=10)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Every server the test starts; whatever still runs is killed at the end."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for s in started:
            stop(s)


# -- the load ----------------------------------------------------------------------------------


@dataclass
class Load:
    decisions: dict[str, pb.Decision] = field(default_factory=dict)  # acknowledged Route
    outcomes: dict[str, int] = field(default_factory=dict)  # acknowledged id -> actual cost
    killed: bool = False
    in_flight: int = 0
    in_flight_at_kill: int = -1
    errors_before_kill: list[str] = field(default_factory=list)
    errors_after_kill: int = 0
    elapsed_at_kill: float = 0.0


def route_request(worker: int, i: int) -> pb.RouteRequest:
    return pb.RouteRequest(
        task_id=f"crash-w{worker}-{i}",
        task_type="fix_bug",
        priority=50,
        estimated_input_tokens=INPUT_TOKENS,
        max_output_tokens=OUTPUT_TOKENS,
        labels={"project": "alpha"},
    )


def outcome_for(decision: pb.Decision) -> pb.Outcome:
    return pb.Outcome(
        decision_id=decision.decision_id,
        success=True,
        attempts=[pb.Attempt(model=decision.model, status=pb.ATTEMPT_STATUS_SUCCESS,
                             input_tokens=INPUT_TOKENS, output_tokens=REPORTED_OUTPUT_TOKENS)],
    )


async def call(load: Load, rpc: Any, request: Any) -> Any:
    """One RPC; None when it failed (recorded as expected only if the server was killed)."""
    load.in_flight += 1
    try:
        return await rpc(request, timeout=RPC_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        if load.killed:
            load.errors_after_kill += 1
        else:
            load.errors_before_kill.append(f"{exc.code().name}: {exc.details()}")
        return None
    finally:
        load.in_flight -= 1


async def worker(stub: pb_grpc.RouterStub, n: int, load: Load) -> None:
    i = 0
    while not load.killed:
        decision = await call(load, stub.Route, route_request(n, i))
        if decision is None:
            return
        load.decisions[decision.decision_id] = decision
        i += 1
        # About half the decisions get an outcome, reported right away.
        if i % 2 == 0 and decision.status == pb.DECISION_STATUS_ROUTED:
            ack = await call(load, stub.ReportOutcome, outcome_for(decision))
            if ack is None:
                return
            load.outcomes[ack.decision_id] = ack.actual_cost_micros


async def killer(pid: int, load: Load, started: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        elapsed = loop.time() - started
        enough = len(load.decisions) >= MIN_DECISIONS and len(load.outcomes) >= MIN_OUTCOMES
        if (len(load.decisions) >= MAX_ACKS or (elapsed >= LOAD_S and enough)
                or elapsed >= HARD_DEADLINE_S or load.errors_before_kill):
            break
        await asyncio.sleep(0.01)
    load.elapsed_at_kill = elapsed
    load.in_flight_at_kill = load.in_flight
    load.killed = True
    os.kill(pid, signal.SIGKILL)


async def run_load(target: str, pid: int) -> Load:
    load = Load()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RouterStub(channel)
        started = asyncio.get_running_loop().time()
        tasks = [asyncio.create_task(worker(stub, n, load)) for n in range(WORKERS)]
        tasks.append(asyncio.create_task(killer(pid, load, started)))
        await asyncio.wait_for(asyncio.gather(*tasks), HARD_DEADLINE_S + 2 * RPC_TIMEOUT_S)
    return load


# -- the database ------------------------------------------------------------------------------


def read_db(db: Path) -> sqlite3.Connection:
    """Read-only: the running server owns the file (WAL lets this read beside its writer)."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def ledger_sums(conn: sqlite3.Connection) -> dict[tuple[str, str, float], tuple[int, int]]:
    """(scope, period, period_start) -> (spent, reserved): 'settle' rows count as spent, every
    other kind (reserve, release, expire) as reserved, exactly as Ledger.restore adds them up."""
    sums: dict[tuple[str, str, float], list[int]] = defaultdict(lambda: [0, 0])
    for scope, period, start, kind, amount in conn.execute(
        "SELECT scope, period, period_start, kind, SUM(amount_micros) FROM budget_ledger "
        "GROUP BY scope, period, period_start, kind"
    ):
        sums[(scope, period, start)][0 if kind == "settle" else 1] += amount
    return {k: (v[0], v[1]) for k, v in sums.items()}


def budget_statuses(target: str) -> list[pb.BudgetStatus]:
    with grpc.insecure_channel(target) as ch:
        return list(pb_grpc.RouterStub(ch).GetBudgetStatus(pb.BudgetQuery(), timeout=10).budgets)


def assert_memory_matches_rows(target: str, db: Path) -> dict[tuple[str, str], pb.BudgetStatus]:
    """GetBudgetStatus's spent/reserved for every periodic scope equal the persisted row sums."""
    statuses = budget_statuses(target)
    with contextlib.closing(read_db(db)) as conn:
        sums = ledger_sums(conn)
    by_scope = {}
    for b in statuses:
        if b.period == pb.BUDGET_PERIOD_TASK:
            continue
        period = PERIOD_NAME[b.period]
        start = b.period_start.seconds + b.period_start.nanos / 1e9
        keys = [k for k in sums if k[0] == b.scope and k[1] == period and abs(k[2] - start) < 1e-3]
        spent, reserved = sums[keys[0]] if keys else (0, 0)
        assert len(keys) <= 1, keys
        assert (b.spent_micros, b.reserved_micros) == (spent, reserved), (
            f"{b.scope}/{period}: memory spent={b.spent_micros} reserved={b.reserved_micros}, "
            f"rows spent={spent} reserved={reserved}"
        )
        by_scope[(b.scope, period)] = b
    return by_scope


# -- the test ----------------------------------------------------------------------------------


def test_kill_9_under_load_loses_no_ack_and_ledger_matches_rows(
    tmp_path: Path, servers: list[Server]
) -> None:
    raw = config_dict(tmp_path)
    raw["budgets"] = [
        {"scope": "global", "period": "day", "limit_usd": 1000},
        {"scope": "project:alpha", "period": "month", "limit_usd": 1000, "on_exceed": "reject"},
        {"scope": "provider:*", "period": "week", "limit_usd": 1000},
        {"scope": "task", "limit_usd": 1.00},
    ]
    config = write_config(tmp_path, raw)
    db = Path(raw["store"]["path"])

    first = start_server(config, tmp_path / "first.log")
    servers.append(first)
    load = asyncio.run(run_load(first.target, first.proc.pid))
    assert first.proc.wait(timeout=10) == -signal.SIGKILL, first.logs()

    # The load was real: no errors before the kill, calls in flight when it came.
    assert not load.errors_before_kill, load.errors_before_kill[:5]
    assert len(load.decisions) >= MIN_DECISIONS, (len(load.decisions), load.elapsed_at_kill)
    assert len(load.outcomes) >= MIN_OUTCOMES, (len(load.outcomes), load.elapsed_at_kill)
    assert load.in_flight_at_kill > 0
    assert all(d.status == pb.DECISION_STATUS_ROUTED for d in load.decisions.values())

    second = start_server(config, tmp_path / "second.log")
    servers.append(second)

    # Totals first, before this process makes any decision of its own.
    budgets = assert_memory_matches_rows(second.target, db)
    assert {("global", "day"), ("project:alpha", "month")} <= set(budgets)
    providers = {d.provider for d in load.decisions.values()}
    assert {(f"provider:{p}", "week") for p in providers} <= set(budgets)
    assert budgets[("global", "day")].spent_micros > 0
    assert budgets[("global", "day")].reserved_micros > 0

    with contextlib.closing(read_db(db)) as conn:
        decided = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT decision_id, estimated_cost_micros, chosen_provider "
            "FROM model_routing_decisions")}
        task_of = dict(conn.execute("SELECT decision_id, task_id FROM model_routing_decisions"))
        outcomes = dict(conn.execute(
            "SELECT decision_id, actual_cost_micros FROM decision_outcomes"))
        attempts = {r[0] for r in conn.execute(
            "SELECT decision_id FROM model_selections WHERE attempt_index = 0 AND status = ?",
            ("SUCCESS",))}
        rows: dict[tuple[str, str, str], int] = {
            (r[0], r[1], r[2]): r[3] for r in conn.execute(
                "SELECT reservation_id, scope, kind, SUM(amount_micros) FROM budget_ledger "
                "GROUP BY reservation_id, scope, kind")}

    # Every acknowledged decision and outcome survived, with what the client was told.
    lost = set(load.decisions) - set(decided)
    assert not lost, f"{len(lost)} acknowledged decisions missing, e.g. {sorted(lost)[:3]}"
    for did, d in load.decisions.items():
        assert decided[did] == (d.estimated_cost_micros, d.provider)
    lost = set(load.outcomes) - set(outcomes)
    assert not lost, f"{len(lost)} acknowledged outcomes missing, e.g. {sorted(lost)[:3]}"
    for did, cost in load.outcomes.items():
        assert outcomes[did] == cost > 0

    # Each write was all-or-nothing, acknowledged or not: a decision with its reservation in
    # every bucket it touches, an outcome with its attempt, release and settlement. So the
    # ledger rows are exactly what the persisted decisions and outcomes imply.
    assert set(outcomes) <= set(decided)
    assert attempts == set(outcomes)
    expected: dict[tuple[str, str, str], int] = {}
    for did, (estimate, provider) in decided.items():
        # The per-task budget is a bucket of its own per task id.
        for scope in ("global", "project:alpha", f"provider:{provider}", f"task:{task_of[did]}"):
            expected[(did, scope, "reserve")] = estimate
            if did in outcomes:
                expected[(did, scope, "release")] = -estimate
                expected[(did, scope, "settle")] = outcomes[did]
    wrong = sorted(k for k in rows.keys() | expected.keys() if rows.get(k) != expected.get(k))
    assert not wrong, [(k, rows.get(k), expected.get(k)) for k in wrong[:5]]
    open_ids = set(decided) - set(outcomes)
    assert budgets[("global", "day")].spent_micros == sum(outcomes.values())
    assert budgets[("global", "day")].reserved_micros == sum(decided[i][0] for i in open_ids)

    with grpc.insecure_channel(second.target) as ch:
        stub = pb_grpc.RouterStub(ch)
        # The restarted server still routes ...
        fresh = stub.Route(route_request(99, 0), timeout=10)
        assert fresh.status == pb.DECISION_STATUS_ROUTED and fresh.model
        # ... settles a reservation it only knows from the rows ...
        pending = next(d for did, d in load.decisions.items() if did in open_ids)
        ack = stub.ReportOutcome(outcome_for(pending), timeout=10)
        assert not ack.duplicate and ack.actual_cost_micros > 0
        # ... and refuses to record an acknowledged outcome twice.
        again = stub.ReportOutcome(outcome_for(load.decisions[next(iter(load.outcomes))]),
                                   timeout=10)
        assert again.duplicate

    after = assert_memory_matches_rows(second.target, db)
    g_before, g_after = budgets[("global", "day")], after[("global", "day")]
    assert g_after.spent_micros == g_before.spent_micros + ack.actual_cost_micros
    assert g_after.reserved_micros == (g_before.reserved_micros + fresh.estimated_cost_micros
                                       - pending.estimated_cost_micros)

    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=15) == 0, second.logs()
