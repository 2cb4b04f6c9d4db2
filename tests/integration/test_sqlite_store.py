"""What is SQLite's own: migrations by user_version on a real file, WAL, synchronous.

Everything both stores promise (group commit, exactly-once outcomes, the ledger, pruning,
stats, kill -9) is in test_store_contract.py, run against this store and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from routing_sidecar.errors import StorageError
from routing_sidecar.ports import COMMITS_IN_BURSTS
from routing_sidecar.storage import SCHEMA_VERSION, SqliteStore, migrations
from routing_sidecar.storage.migrations import MIGRATIONS
from routing_sidecar.storage.sqlite import (
    BACKSTOP_CHECKPOINT_PAGES,
    CHECKPOINT_EVERY_S,
    WAL_SIZE_LIMIT_BYTES,
)
from tests.store_records import FixedClock, decision_record

TABLES = {"model_routing_decisions", "model_selections", "decision_outcomes",
          "model_performance", "budget_ledger", "routing_policies", "learned_state"}


def peek(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read the file from a separate, plain sqlite3 connection: what a crash would leave."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "routing.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    try:
        yield s
    finally:
        await s.close()


# -- schema ----------------------------------------------------------------------------------

async def test_migrations_apply_on_a_new_file_and_are_a_no_op_on_reopen(db_path: Path) -> None:
    store = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    await store.record_decision(decision_record(1))
    await store.close()
    assert peek(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert peek(db_path, "PRAGMA journal_mode") == [("wal",)]
    names = {r[0] for r in peek(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert names >= TABLES
    schema = peek(db_path, "SELECT sql FROM sqlite_master ORDER BY name")

    again = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    assert await again.get_decision("d1") == decision_record(1)
    await again.close()
    assert peek(db_path, "SELECT sql FROM sqlite_master ORDER BY name") == schema

    # Re-running the scripts over an existing schema is harmless too.
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 0")
    third = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    assert await third.get_decision("d1") is not None
    await third.close()
    assert peek(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_a_new_file_gets_the_schema_that_script_by_script_migration_builds(
    tmp_path: Path,
) -> None:
    # A new file takes every script in one transaction; a file at version 1 takes the rest
    # one by one (the AddColumn step checking its table first): the schemas are the same.
    fresh, stepped = tmp_path / "fresh.db", tmp_path / "stepped.db"
    with sqlite3.connect(stepped) as conn:
        conn.executescript(f"{MIGRATIONS[0]}\nPRAGMA user_version = 1;")
    for path in (fresh, stepped):
        store = await SqliteStore.open(str(path), retention_days=30, clock=FixedClock())
        await store.record_decision(decision_record(1))
        await store.close()
        assert peek(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    schema = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
    assert peek(fresh, schema) == peek(stepped, schema)
    assert "off_plan" in str(peek(fresh, "PRAGMA table_info(model_selections)"))


async def test_a_schema_another_process_created_first_is_kept_as_it_is(db_path: Path) -> None:
    # Two processes opening one new shared file: the second one's single transaction finds
    # the column its AddColumn step adds already there, keeps nothing and says so.
    store = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    await store.record_decision(decision_record(1))
    await store.close()
    schema = peek(db_path, "SELECT sql FROM sqlite_master ORDER BY name")
    conn = await aiosqlite.connect(db_path, isolation_level=None)
    try:
        assert not await migrations._create_schema(conn)
        assert await migrations.migrate(conn) == SCHEMA_VERSION
    finally:
        await conn.close()
    assert peek(db_path, "SELECT sql FROM sqlite_master ORDER BY name") == schema
    assert peek(db_path, "SELECT count(*) FROM model_routing_decisions") == [(1,)]


async def test_a_file_from_a_newer_build_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer"):
        await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())


def wal_bytes(db_path: Path) -> int:
    """The size of the store's write-ahead log file."""
    return Path(f"{db_path}-wal").stat().st_size


async def test_the_wal_is_cut_back_once_checkpoints_let_it_start_over(
    store: SqliteStore, db_path: Path,
) -> None:
    # One decision per commit, each rewriting a few pages: past the limit in the WAL...
    n = 0
    while wal_bytes(db_path) <= WAL_SIZE_LIMIT_BYTES:
        for _ in range(200):
            await store.record_decision(decision_record(n))
            n += 1
    assert wal_bytes(db_path) > WAL_SIZE_LIMIT_BYTES
    # ...then, after the checkpointer's next rounds, the next commit starts the WAL over and
    # cuts the file back (the checkpointer runs every CHECKPOINT_EVERY_S).
    for _ in range(50):
        await asyncio.sleep(CHECKPOINT_EVERY_S)
        await store.record_decision(decision_record(n))
        n += 1
        if wal_bytes(db_path) <= WAL_SIZE_LIMIT_BYTES:
            break
    assert wal_bytes(db_path) <= WAL_SIZE_LIMIT_BYTES
    assert peek(db_path, "SELECT count(*) FROM model_routing_decisions") == [(n,)]


@pytest.mark.parametrize(("mode", "value"), [("NORMAL", 1), ("FULL", 2)])
async def test_synchronous_is_configurable(db_path: Path, mode: str, value: int) -> None:
    store = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock(),
                                   synchronous=mode)  # type: ignore[arg-type]

    def read_pragma(conn: sqlite3.Connection) -> int:
        value: int = conn.execute("PRAGMA synchronous").fetchone()[0]
        return value

    assert await store.writer.run(read_pragma) == value
    await store.close()


async def test_a_file_is_owned_by_one_store_at_a_time(store: SqliteStore, db_path: Path) -> None:
    with pytest.raises(StorageError, match="in use by another sidecar"):
        await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    await store.record_decision(decision_record(1))  # the owner is untouched
    await store.close()
    again = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock())
    await again.close()


# -- the writer ------------------------------------------------------------------------------

async def _quiet_loop() -> None:
    """Let every callback already scheduled run, so that nothing else is ready."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_job_on_a_quiet_loop_commits_without_a_loop_turn(
    store: SqliteStore, db_path: Path
) -> None:
    await _quiet_loop()
    commits = store.writer.commits
    step = store.record_decision(decision_record(1))
    with pytest.raises(StopIteration):  # finished at its first step: it never waited
        step.send(None)
    assert store.writer.commits == commits + 1
    assert peek(db_path, "SELECT decision_id FROM model_routing_decisions") == [("d1",)]


async def test_a_job_of_a_burst_waits_for_the_writer_even_on_a_quiet_loop(
    store: SqliteStore, db_path: Path
) -> None:
    burst = contextvars.copy_context()  # as a RouteStream's commits run: in their own context
    burst.run(COMMITS_IN_BURSTS.set, True)
    await _quiet_loop()
    step = store.record_decision(decision_record(1))
    burst.run(step.send, None)  # it waits for the writer's batch: the rest of its burst may join
    assert peek(db_path, "SELECT count(*) FROM model_routing_decisions") == [(0,)]
    burst.run(step.close)
    await _quiet_loop()  # the job itself is still written, as a cancelled caller's is
    assert peek(db_path, "SELECT count(*) FROM model_routing_decisions") == [(1,)]


async def test_a_job_behind_a_running_batch_waits_for_it_and_commits_after_it(
    store: SqliteStore, db_path: Path
) -> None:
    release, entered = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        entered.set()
        conn.execute("INSERT INTO routing_policies VALUES ('h', '{}', 1.0)")
        release.wait(10)

    exclusive = asyncio.create_task(store.writer.run(slow))
    assert await asyncio.to_thread(entered.wait, 10)
    await _quiet_loop()
    job = asyncio.create_task(store.record_decision(decision_record(2)))
    await asyncio.sleep(0.05)
    assert not job.done()  # queued behind the running transaction, not committed beside it
    release.set()
    await asyncio.gather(exclusive, job)
    assert peek(db_path, "SELECT count(*) FROM model_routing_decisions") == [(1,)]


async def test_jobs_ready_in_the_same_turn_share_one_commit(store: SqliteStore) -> None:
    await _quiet_loop()
    commits = store.writer.commits
    await asyncio.gather(*(store.record_decision(decision_record(i)) for i in range(10)))
    assert store.writer.commits - commits < 10


async def _commits_on_the_loop(store: SqliteStore, *, burst: bool) -> set[bool]:
    """Commit ten jobs ready at once; for each COMMIT, whether it ran on the loop's thread."""
    loop_thread, seen = threading.get_ident(), []

    def trace(sql: str) -> None:
        if sql == "COMMIT":
            seen.append(threading.get_ident() == loop_thread)

    await store.writer.run(lambda conn: conn.set_trace_callback(trace))
    await _quiet_loop()
    seen.clear()
    context = contextvars.copy_context()  # a burst's jobs run as a RouteStream's do
    context.run(COMMITS_IN_BURSTS.set, burst)
    jobs = [context.run(asyncio.ensure_future, store.record_decision(decision_record(i)))
            for i in range(10)]
    await asyncio.gather(*jobs)
    await store.writer.run(lambda conn: conn.set_trace_callback(None))
    assert 0 < len(seen) < 10, seen  # the jobs shared commits: batches of more than two
    return set(seen)


@pytest.mark.parametrize(("mode", "owned", "burst", "on_loop"), [
    # No fsync per commit: a burst's batch commits on the loop, others in the writer thread.
    ("NORMAL", True, True, {True}),
    ("NORMAL", True, False, {False}),
    # An fsync per commit waits beside the loop, not on it.
    ("FULL", True, True, {False}),
    # A file other processes lock too: waiting for their lock must not stop the loop.
    ("NORMAL", False, True, {False}),
])
async def test_where_a_batch_commits_follows_bursts_fsyncs_and_sharing(
    db_path: Path, mode: str, owned: bool, burst: bool, on_loop: set[bool]
) -> None:
    store = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock(),
                                   synchronous=mode, owned=owned)  # type: ignore[arg-type]
    try:
        assert await _commits_on_the_loop(store, burst=burst) == on_loop
        assert store.writer._bursts == 0  # every burst job counted out once committed
    finally:
        await store.close()
    assert peek(db_path, "SELECT count(*) FROM model_routing_decisions") == [(10,)]


@pytest.mark.parametrize(("owned", "mode", "on_loop"), [
    (True, "NORMAL", [True]), (False, "NORMAL", [False]), (True, "FULL", [False])])
async def test_a_lone_commit_runs_on_the_loop_only_in_a_file_this_process_owns(
    db_path: Path, owned: bool, mode: str, on_loop: list[bool]
) -> None:
    """Another process's lock on a shared file would hold the loop for up to busy_timeout;
    with FULL, every commit waits for its fsync."""
    store = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock(),
                                   owned=owned, synchronous=mode)  # type: ignore[arg-type]
    loop_thread, seen = threading.get_ident(), []

    def trace(sql: str) -> None:
        if sql == "COMMIT":
            seen.append(threading.get_ident() == loop_thread)

    try:
        await store.writer.run(lambda conn: conn.set_trace_callback(trace))
        await _quiet_loop()
        seen.clear()
        await store.record_decision(decision_record(1))  # alone: committed in its caller
        # Two at once: a batch of two, taken by the writer task.
        await asyncio.gather(*(store.record_decision(decision_record(i)) for i in (2, 3)))
        await store.writer.run(lambda conn: conn.set_trace_callback(None))
    finally:
        await store.close()
    assert seen and set(seen) == set(on_loop), seen


async def _just_after_a_full_checkpoint(store: SqliteStore) -> None:
    """Return as soon as a checkpoint round has copied the WAL back whole.

    The next round is then a round's time away, so nothing changes what the writer was told.
    """
    for _ in range(50):
        if store.writer._restart_due:
            break
        await asyncio.sleep(CHECKPOINT_EVERY_S / 20)
    else:
        pytest.fail("no checkpoint round copied the WAL back whole")
    await _quiet_loop()


def wal_salt(db_path: Path) -> bytes:
    """The WAL header's salts: SQLite changes them each time the WAL starts over."""
    with open(f"{db_path}-wal", "rb") as wal:
        return wal.read(24)[16:]


async def test_the_commit_that_starts_the_wal_over_runs_beside_the_loop(
    store: SqliteStore, db_path: Path,
) -> None:
    """That commit fsyncs the WAL's new header: a disk flush the loop must not wait on."""
    loop_thread, seen = threading.get_ident(), []

    def trace(sql: str) -> None:
        if sql == "COMMIT":
            seen.append((threading.get_ident() == loop_thread, wal_salt(db_path)))

    await store.writer.run(lambda conn: conn.set_trace_callback(trace))
    for i in range(20):
        await store.record_decision(decision_record(i))
    await _just_after_a_full_checkpoint(store)
    seen.clear()
    salt = wal_salt(db_path)
    await store.record_decision(decision_record(20))  # starts the WAL over
    await _quiet_loop()
    await store.record_decision(decision_record(21))  # an ordinary small commit again
    await store.writer.run(lambda conn: conn.set_trace_callback(None))
    # The trace runs as COMMIT starts: the second commit sees the salt the first one wrote.
    assert [on_loop for on_loop, _ in seen] == [False, True], seen
    assert seen[0][1] == salt != seen[1][1] == wal_salt(db_path)
    assert peek(db_path, "SELECT count(*) FROM model_routing_decisions") == [(22,)]


async def test_commits_that_may_flush_the_disk_run_beside_the_loop(
    store: SqliteStore, db_path: Path,
) -> None:
    """Near the backstop (a commit crossing it checkpoints, fsyncs included), or in a round."""
    loop_thread, seen = threading.get_ident(), []

    def trace(sql: str) -> None:
        if sql == "COMMIT":
            seen.append(threading.get_ident() == loop_thread)

    await store.writer.run(lambda conn: conn.set_trace_callback(trace))
    await store.record_decision(decision_record(0))
    await _just_after_a_full_checkpoint(store)
    seen.clear()
    # As a round reports it: not copied back whole, three quarters of the way to the backstop.
    store.writer.wal_checked((False, BACKSTOP_CHECKPOINT_PAGES * 3 // 4, 10))
    for i in (1, 2):
        await store.record_decision(decision_record(i))
        await _quiet_loop()
    store.writer.wal_checked((False, BACKSTOP_CHECKPOINT_PAGES // 2, 10))  # the WAL started over
    await store.record_decision(decision_record(3))
    await _quiet_loop()
    # While a round runs it may copy the WAL back whole: the next commit would restart it.
    store.writer.checkpoint_started()
    await store.record_decision(decision_record(4))
    await _quiet_loop()
    store.writer.wal_checked(None)  # the round failed: nothing is known of the WAL
    await store.record_decision(decision_record(5))
    await store.writer.run(lambda conn: conn.set_trace_callback(None))
    assert seen == [False, False, True, False, True], seen
    assert peek(db_path, "SELECT count(*) FROM model_routing_decisions") == [(6,)]


async def test_a_lock_held_elsewhere_on_a_shared_file_does_not_stop_the_loop(
    db_path: Path
) -> None:
    store = await SqliteStore.open(str(db_path), retention_days=30, clock=FixedClock(),
                                   busy_timeout_ms=2000, owned=False)
    other = sqlite3.connect(db_path, isolation_level=None)  # another process's writer
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.ensure_future(store.record_decision(decision_record(1)))
        await asyncio.sleep(0.3)
        assert not write.done() and ticks >= 10  # waiting for the lock, beside the loop
        other.execute("COMMIT")
        await write
    finally:
        ticker.cancel()
        other.close()
        await store.close()
    assert peek(db_path, "SELECT count(*) FROM model_routing_decisions") == [(1,)]


async def test_enums_and_bools_are_stored_as_their_text_and_integers(
    store: SqliteStore, db_path: Path
) -> None:
    await store.record_decision(decision_record(1))
    rows = peek(db_path, "SELECT status, typeof(status), objective, dry_run, typeof(dry_run)"
                         " FROM model_routing_decisions")
    record = decision_record(1)
    assert rows == [(record.status.value, "text", record.objective.value,
                     int(record.dry_run), "integer")]
    assert sqlite3.adapters[(type(record.status), sqlite3.PrepareProtocol)] is str
