"""What is PostgreSQL's own: migrations under the advisory lock, lost connections, several
sidecars on one database, and the DSN's password kept out of every message and row.

Everything both stores promise is in test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
import yaml

from routing_sidecar.app import Sidecar
from routing_sidecar.config import StoreConfig, parse_config
from routing_sidecar.errors import StorageError
from routing_sidecar.records import PerformanceRecord
from routing_sidecar.storage import Job, PostgresStore, Write
from routing_sidecar.storage.postgres import SCHEMA_VERSION, Redactor
from routing_sidecar.storage.postgres.migrations import LOCK_KEY, migrate
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict, free_port
from tests.pg_server import PgServer, PgServerError, find_bindir
from tests.store_records import T0, FixedClock, attempt, decision_record, outcome

TABLES = {"model_routing_decisions", "model_selections", "decision_outcomes",
          "model_performance", "budget_ledger", "routing_policies", "learned_state",
          "schema_migrations", "routing_policy_changes", "model_pauses", "decision_grades"}


async def open_pg(dsn: str, **kw: Any) -> PostgresStore:
    return await PostgresStore.open(dsn, retention_days=30, clock=FixedClock(), **kw)


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the test's database."""
    c = await asyncpg.connect(pg_dsn)
    try:
        yield c
    finally:
        await c.close()


async def wait_for(conn: asyncpg.Connection, sql: str, *args: object) -> Any:
    """Poll a query until it returns a row (what the server is doing, not how fast)."""
    for _ in range(600):
        value = await conn.fetchval(sql, *args)
        if value is not None:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"never true: {sql}")


def test_the_harness_fails_loudly_without_server_binaries(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No silent skip: without initdb and postgres every PostgreSQL test errors with this.
    monkeypatch.setenv("ROUTING_PG_BINDIR", str(tmp_path))
    with pytest.raises(PgServerError, match="install the postgresql package"):
        find_bindir()
    monkeypatch.delenv("ROUTING_PG_BINDIR")
    assert (find_bindir() / "initdb").is_file()


# -- migrations -------------------------------------------------------------------------------

async def test_migrations_build_the_schema_once_and_reopen_is_a_no_op(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    store = await open_pg(pg_dsn)
    await store.record_decision(decision_record(1))
    await store.close()
    versions = await conn.fetch("SELECT version, applied_at FROM schema_migrations ORDER BY 1")
    assert [r["version"] for r in versions] == list(range(1, SCHEMA_VERSION + 1))
    tables = {r[0] for r in await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert tables == TABLES
    types = {(r[0], r[1]): r[2] for r in await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public'")}
    money = {k: v for k, v in types.items() if k[1].endswith("_micros")}
    assert len(money) >= 6 and set(money.values()) == {"bigint"}, money
    assert types[("model_routing_decisions", "labels_json")] == "jsonb"
    assert types[("model_routing_decisions", "dry_run")] == "boolean"

    again = await open_pg(pg_dsn)
    assert await again.get_decision("d1") == decision_record(1)
    await again.close()
    assert await conn.fetch("SELECT version, applied_at FROM schema_migrations ORDER BY 1") == (
        versions)


async def test_a_database_from_a_newer_build_is_refused(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    await (await open_pg(pg_dsn)).close()
    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", SCHEMA_VERSION + 1)
    with pytest.raises(StorageError, match="newer") as caught:
        await open_pg(pg_dsn)
    assert "127.0.0.1" in caught.value.message


async def test_concurrent_migrations_apply_each_script_exactly_once(pg_dsn: str) -> None:
    conns = [await asyncpg.connect(pg_dsn) for _ in range(8)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    # Exactly one caller applied each script; the others found it done.
    assert sorted(v for versions in applied for v in versions) == list(
        range(1, SCHEMA_VERSION + 1))
    assert sum(1 for versions in applied if versions) >= 1


async def test_sidecars_opening_together_all_start_on_one_schema(pg_dsn: str,
                                                                 conn: asyncpg.Connection) -> None:
    stores = await asyncio.gather(*(open_pg(pg_dsn) for _ in range(6)))
    try:
        await asyncio.gather(*(s.record_decision(decision_record(i))
                               for i, s in enumerate(stores)))
    finally:
        for s in stores:
            await s.close()
    assert await conn.fetchval("SELECT COUNT(*) FROM schema_migrations") == SCHEMA_VERSION
    assert await conn.fetchval("SELECT COUNT(*) FROM model_routing_decisions") == 6


async def test_open_waits_for_a_migration_holding_the_lock(pg_dsn: str,
                                                          conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    opening = asyncio.create_task(open_pg(pg_dsn))
    # The opener is queued on the advisory lock, and has created nothing meanwhile.
    await wait_for(conn, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    assert not opening.done()
    assert await conn.fetchval("SELECT to_regclass('model_routing_decisions')") is None
    await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    store = await opening
    await store.record_decision(decision_record(1))
    await store.close()


# -- lost connections -------------------------------------------------------------------------

# A deferred constraint trigger runs at COMMIT: it parks the writer's COMMIT on an advisory lock
# the test holds, so the test can cut the connection exactly there.
HOLD_COMMIT = """
CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON model_routing_decisions
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_commit();
"""


async def test_a_connection_lost_mid_commit_fails_the_batch_and_acknowledges_nothing(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    store = await open_pg(pg_dsn)
    try:
        await conn.execute(HOLD_COMMIT)
        await conn.execute("SELECT pg_advisory_lock(4242)")
        writes = [asyncio.create_task(store.record_decision(decision_record(i)))
                  for i in range(5)]
        pid = await wait_for(
            conn, "SELECT pid FROM pg_stat_activity WHERE application_name = 'routing-sidecar' "
            "AND wait_event_type = 'Lock' AND query = 'COMMIT;'")
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        results = await asyncio.gather(*writes, return_exceptions=True)
        await conn.execute("SELECT pg_advisory_unlock(4242)")

        assert all(isinstance(r, StorageError) and r.retryable for r in results), results
        assert all("commit was confirmed" in r.message for r in results)  # type: ignore[union-attr]
        # Not retried job by job: nobody knew whether the batch had committed.
        assert store.writer.failed_batches == 1
        assert store.writer.reconnects == 1
        assert await conn.fetchval("SELECT COUNT(*) FROM model_routing_decisions") == 0

        # The next write takes a fresh connection.
        await conn.execute("DROP TRIGGER hold_commit ON model_routing_decisions")
        await store.record_decision(decision_record(9))
        assert await conn.fetchval("SELECT COUNT(*) FROM model_routing_decisions") == 1
    finally:
        await store.close()


async def test_an_idle_connection_killed_by_the_server_is_replaced_unnoticed(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    store = await open_pg(pg_dsn)
    try:
        await store.record_decision(decision_record(1))
        killed = await conn.fetchval(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'routing-sidecar'")
        assert killed >= 1
        await store.record_decision(decision_record(2))
        assert store.writer.reconnects == 1
        assert store.writer.failed_batches == 0
        # Reads too: every pooled connection was cut, and a read goes through regardless.
        await conn.fetchval(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'routing-sidecar'")
        assert await store.get_decision("d2") is not None
    finally:
        await store.close()


async def test_an_unreachable_server_fails_the_open_with_one_clear_error(pg: PgServer) -> None:
    dead = f"postgresql://routing:{pg.password}@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(StorageError, match="cannot connect") as caught:
        await open_pg(dead, connect_timeout_s=5)
    assert pg.password not in caught.value.message
    assert "127.0.0.1" in caught.value.message
    assert caught.value.retryable


# -- several sidecars on one database ---------------------------------------------------------

async def test_two_sidecars_reporting_one_decision_write_one_outcome(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    a, b = await open_pg(pg_dsn), await open_pg(pg_dsn)
    try:
        for i in range(20):
            await a.record_decision(decision_record(i))
        results = await asyncio.gather(*(
            s.record_outcome(f"d{i}", [attempt(f"d{i}", 0)], outcome(f"d{i}"), ())
            for i in range(20) for s in (a, b, a, b)))
    finally:
        await a.close()
        await b.close()
    for i in range(20):
        assert sorted(results[4 * i:4 * i + 4]) == [False, False, False, True]
    assert await conn.fetchval("SELECT COUNT(*) FROM decision_outcomes") == 20
    assert await conn.fetchval("SELECT COUNT(*) FROM model_selections") == 20


async def test_sidecars_adding_to_the_same_windows_never_deadlock(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    # Upserts lock their window rows; batches from three sidecars, each naming the windows in
    # both orders, would deadlock unless every writer takes the rows in one order.
    stores = [await open_pg(pg_dsn) for _ in range(3)]
    windows = [PerformanceRecord("fix_bug", m, T0 + h * 3600, decisions=1, successes=1,
                                 cost_sum_micros=10)
               for m in ("gpt-5", "claude-haiku-4-5") for h in range(3)]
    n = 1 + 3 * 60  # one report to create the rows, then three rounds of 60 at once
    try:
        await asyncio.gather(*(stores[0].record_decision(decision_record(i)) for i in range(n)))

        async def report(i: int) -> bool:
            order = windows if i % 2 else windows[::-1]
            return await stores[i % 3].record_outcome(f"d{i}", [attempt(f"d{i}", 0)],
                                                      outcome(f"d{i}"), (), order)

        assert await report(0)  # the rows exist from here on: each report updates them
        for first in range(1, n, 60):
            assert all(await asyncio.gather(*(report(i) for i in range(first, first + 60))))
        assert [s.writer.failed_batches for s in stores] == [0, 0, 0]
    finally:
        for s in stores:
            await s.close()
    rows = await conn.fetch("SELECT decisions, cost_sum_micros FROM model_performance")
    assert [tuple(r) for r in rows] == [(n, 10 * n)] * len(windows)


# -- the password -----------------------------------------------------------------------------

def test_redactor_masks_every_spelling_of_the_password() -> None:
    redact = Redactor("postgresql://u:p%40ss%2Fw0rd@db.example:6432/audit?password=other1")
    text = "p@ss/w0rd p%40ss%2Fw0rd other1 kept"
    assert redact(text) == "*** *** *** kept"
    assert redact.where == "postgresql://u@db.example:6432/audit"


async def test_the_password_appears_in_no_error_and_no_log(
    pg: PgServer, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = pg_dsn.replace(pg.password, "wrong-" + pg.password[::-1])
    with pytest.raises(StorageError, match="password authentication failed") as bad_login:
        await open_pg(wrong)
    assert pg.password[::-1] not in bad_login.value.message

    store = await open_pg(pg_dsn)
    try:
        # asyncpg quotes a rejected argument in its message: here the argument is the password.
        with pytest.raises(StorageError) as echoed:
            await store.writer.submit(Job((Write("SELECT $1::bigint", (pg.password,)),)))
        assert "***" in echoed.value.message and pg.password not in echoed.value.message
    finally:
        await store.close()
    assert store.where in "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    for record in caplog.records:
        assert pg.password not in record.getMessage() + str(record.__dict__)


# -- a whole sidecar on PostgreSQL ------------------------------------------------------------

def pg_config(tmp_path: Any, dsn: str) -> Any:
    raw = config_dict(tmp_path)
    raw["store"] = {"url": dsn, "retention_days": 30, "pool_size": 3}
    raw["budgets"] = [{"scope": "global", "period": "day", "limit_usd": 100}]
    return parse_config(yaml.safe_dump(raw), "test")


async def test_a_sidecar_routes_settles_and_reports_from_postgres(
    tmp_path: Any, pg: PgServer, pg_dsn: str, conn: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = pg_config(tmp_path, pg_dsn)
    assert isinstance(cfg.store, StoreConfig) and cfg.store.path is None
    first = Sidecar(cfg)
    await first.start()
    try:
        assert isinstance(first.store, PostgresStore)
        async with grpc.aio.insecure_channel(first.address) as ch:
            stub = pb_grpc.RouterStub(ch)
            d = await stub.Route(pb.RouteRequest(task_id="t1", task_type="fix_bug",
                                                 estimated_input_tokens=1000,
                                                 max_output_tokens=500,
                                                 labels={"project": "alpha"}))
            ack = await stub.ReportOutcome(pb.Outcome(decision_id=d.decision_id, success=True,
                                                      attempts=[pb.Attempt(
                                                          model=d.model,
                                                          status=pb.ATTEMPT_STATUS_SUCCESS,
                                                          input_tokens=1000,
                                                          output_tokens=400)]))
            assert not ack.duplicate and ack.actual_cost_micros > 0
            stats = await stub.GetRoutingStats(pb.StatsQuery(hours=1, label_keys=["project"]))
    finally:
        await first.stop()
    cells = {(c.dimension, c.value): c.decisions for c in stats.cells}
    assert cells[("task_type", "fix_bug")] == 1 and cells[("label:project", "alpha")] == 1
    assert await conn.fetchval("SELECT actual_cost_micros FROM decision_outcomes") == (
        ack.actual_cost_micros)
    stored = await conn.fetchval("SELECT config_json FROM routing_policies")
    assert pg.password not in stored and "127.0.0.1" in stored
    for record in caplog.records:
        assert pg.password not in record.getMessage() + str(record.__dict__)

    # Another sidecar on the same database rebuilds the spend from its rows.
    second = Sidecar(pg_config(tmp_path, pg_dsn))
    await second.start()
    try:
        async with grpc.aio.insecure_channel(second.address) as ch:
            budgets = await pb_grpc.RouterStub(ch).GetBudgetStatus(pb.BudgetQuery())
        (g,) = [b for b in budgets.budgets if b.scope == "global"]
        assert (g.spent_micros, g.reserved_micros) == (ack.actual_cost_micros, 0)
    finally:
        await second.stop()
