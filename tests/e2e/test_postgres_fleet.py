"""A fleet: three real `routing-sidecar serve` processes on one PostgreSQL database.

Decisions made on any sidecar are settled through another and all show in one `report` asked
of a third; a sidecar killed with SIGKILL under load leaves in PostgreSQL every decision and
outcome it acknowledged, each written whole, and the survivors carry on from those rows.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict, write_config
from tests.e2e.test_crash_recovery import (
    MIN_DECISIONS,
    MIN_OUTCOMES,
    Server,
    outcome_for,
    route_request,
    run_load,
    start_server,
    stop,
)
from tests.e2e.test_process import BIN
from tests.pg_server import PgServer

SIDECARS = 3
PER_SIDECAR = 12
BUDGETS = [
    {"scope": "global", "period": "day", "limit_usd": 1000},
    {"scope": "project:alpha", "period": "month", "limit_usd": 1000, "on_exceed": "reject"},
    {"scope": "provider:*", "period": "week", "limit_usd": 1000},
]


@pytest.fixture
def started() -> Iterator[list[Server]]:
    """Every sidecar the test starts; whatever still runs at the end is killed."""
    procs: list[Server] = []
    try:
        yield procs
    finally:
        for s in procs:
            stop(s)


def start_fleet(tmp_path: Path, dsn: str, started: list[Server]) -> list[Server]:
    raw = config_dict(tmp_path)
    raw["store"] = {"url": dsn, "pool_size": 4}
    raw["budgets"] = BUDGETS
    config = write_config(tmp_path, raw, "fleet.yaml")
    for n in range(SIDECARS):
        started.append(start_server(config, tmp_path / f"sidecar{n}.log"))
    return list(started)


def report(target: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(BIN), "report", "--target", target, "--hours", "1", "--label-key", "sidecar",
         "--json"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def cell_totals(rep: dict[str, Any], dimension: str) -> Counter[str]:
    totals: Counter[str] = Counter()
    for c in rep.get("cells", []):
        if c["dimension"] == dimension:
            totals[c["value"]] += int(c.get("decisions", 0))
    return totals


def snapshot(dsn: str, *queries: str) -> list[list[tuple[Any, ...]]]:
    """Several queries over one consistent view of the database."""
    async def run() -> list[list[tuple[Any, ...]]]:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return [[tuple(r) for r in await conn.fetch(q)] for q in queries]
        finally:
            await conn.close()

    return asyncio.run(run())


def stop_all(fleet: list[Server]) -> None:
    for s in fleet:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
    for s in fleet:
        if s.proc.returncode != -signal.SIGKILL:
            assert s.proc.wait(timeout=20) == 0, s.logs()


def test_decisions_of_three_sidecars_show_in_one_report(
    tmp_path: Path, pg: PgServer, pg_dsn: str, started: list[Server]
) -> None:
    fleet = start_fleet(tmp_path, pg_dsn, started)
    channels = [grpc.insecure_channel(s.target) for s in fleet]
    stubs = [pb_grpc.RouterStub(ch) for ch in channels]
    decisions: dict[str, pb.Decision] = {}
    for n, stub in enumerate(stubs):
        for i in range(PER_SIDECAR):
            request = route_request(n, i)
            request.labels["sidecar"] = f"s{n}"
            d = stub.Route(request, timeout=10)
            assert d.status == pb.DECISION_STATUS_ROUTED
            decisions[d.decision_id] = d
    # Every other decision is settled through the next sidecar, which knows it only from the
    # database; a repeat through the third is a duplicate, fleet-wide.
    settled: dict[str, int] = {}
    for k, (did, d) in enumerate(decisions.items()):
        if k % 2:
            continue
        maker = k // PER_SIDECAR
        ack = stubs[(maker + 1) % SIDECARS].ReportOutcome(outcome_for(d), timeout=10)
        assert not ack.duplicate and ack.actual_cost_micros > 0
        settled[did] = ack.actual_cost_micros
        again = stubs[(maker + 2) % SIDECARS].ReportOutcome(outcome_for(d), timeout=10)
        assert again.duplicate
    for ch in channels:
        ch.close()

    total = SIDECARS * PER_SIDECAR
    for s in fleet:
        rep = report(s.target)
        assert sum(cell_totals(rep, "task_type").values()) == total
        assert cell_totals(rep, "label:sidecar") == {f"s{n}": PER_SIDECAR
                                                     for n in range(SIDECARS)}
        assert sum(int(p.get("decisions", 0)) for p in rep["providers"]) == total
        spend = sum(int(p.get("spend_micros", 0)) for p in rep["providers"])
        assert spend == sum(settled.values())

    (outcomes,) = snapshot(pg_dsn, "SELECT decision_id, actual_cost_micros FROM decision_outcomes")
    assert dict(outcomes) == settled
    stop_all(fleet)
    for s in fleet:
        assert pg.password not in s.logs()
    (stored,) = snapshot(pg_dsn, "SELECT config_json FROM routing_policies")
    assert stored and all(pg.password not in row[0] for row in stored)


def wait_quiet(dsn: str) -> None:
    """Until no sidecar connection is running a statement: the killed one's are gone."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (rows,) = snapshot(dsn, "SELECT COUNT(*) FROM pg_stat_activity WHERE "
                                "application_name = 'routing-sidecar' AND state = 'active'")
        if rows[0][0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("sidecar connections stayed busy")


def test_kill_9_of_one_sidecar_under_load_loses_nothing_acknowledged(
    tmp_path: Path, pg_dsn: str, started: list[Server]
) -> None:
    victim, *survivors = start_fleet(tmp_path, pg_dsn, started)
    load = asyncio.run(run_load(victim.target, victim.proc.pid))
    assert victim.proc.wait(timeout=10) == -signal.SIGKILL, victim.logs()
    assert not load.errors_before_kill, load.errors_before_kill[:5]
    assert len(load.decisions) >= MIN_DECISIONS and len(load.outcomes) >= MIN_OUTCOMES
    assert load.in_flight_at_kill > 0

    wait_quiet(pg_dsn)
    decided_rows, outcome_rows, attempt_rows, ledger_rows = snapshot(
        pg_dsn,
        "SELECT decision_id, estimated_cost_micros, chosen_provider FROM model_routing_decisions",
        "SELECT decision_id, actual_cost_micros FROM decision_outcomes",
        "SELECT decision_id FROM model_selections WHERE attempt_index = 0 AND status = 'SUCCESS'",
        "SELECT reservation_id, scope, kind, SUM(amount_micros)::bigint FROM budget_ledger "
        "GROUP BY reservation_id, scope, kind")
    decided = {r[0]: (r[1], r[2]) for r in decided_rows}
    outcomes = dict(outcome_rows)

    # Every acknowledged decision and outcome is there, as the client was told.
    lost = set(load.decisions) - set(decided)
    assert not lost, f"{len(lost)} acknowledged decisions missing, e.g. {sorted(lost)[:3]}"
    for did, d in load.decisions.items():
        assert decided[did] == (d.estimated_cost_micros, d.provider)
    lost = set(load.outcomes) - set(outcomes)
    assert not lost, f"{len(lost)} acknowledged outcomes missing, e.g. {sorted(lost)[:3]}"
    for did, cost in load.outcomes.items():
        assert outcomes[did] == cost > 0

    # Acknowledged or not, each write is whole: a decision with its reservation in each of
    # its buckets, an outcome with its attempt, release and settlement.
    assert set(outcomes) <= set(decided)
    assert {r[0] for r in attempt_rows} == set(outcomes)
    expected: dict[tuple[str, str, str], int] = {}
    for did, (estimate, provider) in decided.items():
        for scope in ("global", "project:alpha", f"provider:{provider}"):
            expected[(did, scope, "reserve")] = estimate
            if did in outcomes:
                expected[(did, scope, "release")] = -estimate
                expected[(did, scope, "settle")] = outcomes[did]
    rows = {(r[0], r[1], r[2]): r[3] for r in ledger_rows}
    wrong = sorted(k for k in rows.keys() | expected.keys() if rows.get(k) != expected.get(k))
    assert not wrong, [(k, rows.get(k), expected.get(k)) for k in wrong[:5]]

    # The survivors carry on from the rows: one settles a decision the victim left open,
    # refuses one the victim settled, and both report every decision in the database.
    pending = next(d for did, d in load.decisions.items() if did not in outcomes)
    with grpc.insecure_channel(survivors[0].target) as ch:
        stub = pb_grpc.RouterStub(ch)
        ack = stub.ReportOutcome(outcome_for(pending), timeout=10)
        assert not ack.duplicate and ack.actual_cost_micros > 0
        again = stub.ReportOutcome(outcome_for(load.decisions[next(iter(load.outcomes))]),
                                   timeout=10)
        assert again.duplicate
    for s in survivors:
        assert sum(cell_totals(report(s.target), "task_type").values()) == len(decided)
    stop_all(survivors)
