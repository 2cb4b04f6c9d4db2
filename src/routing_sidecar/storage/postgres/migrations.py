"""PostgreSQL schema migrations: script N brings the database to version N, applied once.

Scripts only ever get appended. Each runs in its own transaction together with its row in
`schema_migrations` (PostgreSQL's DDL is transactional, so a crash mid-script leaves the
previous version intact), all under one session advisory lock: when many sidecars start
together, the first to take the lock applies what is pending and the others, once they get
it, find nothing left to do. Money columns are BIGINT micro-USD; PostgreSQL's strict typing
refuses a float there, as SQLite's STRICT tables do.
"""

from __future__ import annotations

import asyncpg

from routing_sidecar.errors import StorageError

# pg_advisory_lock key (int64) of this schema: the ASCII of "routing" in one number.
LOCK_KEY = int.from_bytes(b"routing", "big")
LOCK_WAIT_S = 120.0  # a long migration of another sidecar is worth waiting for

_V1 = """
CREATE TABLE model_routing_decisions (
    decision_id           TEXT PRIMARY KEY,
    task_id               TEXT NOT NULL,
    task_type             TEXT NOT NULL,
    status                TEXT NOT NULL,
    reason_code           TEXT NOT NULL,
    chosen_model          TEXT,
    chosen_provider       TEXT,
    chosen_slot_id        TEXT,
    tier                  INTEGER,
    policy                TEXT NOT NULL,
    objective             TEXT NOT NULL,
    estimated_cost_micros BIGINT NOT NULL,
    reason                TEXT NOT NULL,
    alternatives_json     JSON NOT NULL,   -- json keeps the text exactly as written
    fallbacks_json        JSON NOT NULL,
    labels_json           JSONB NOT NULL,  -- jsonb for the per-label stats
    dry_run               BOOLEAN NOT NULL,
    decided_at            DOUBLE PRECISION NOT NULL,
    config_hash           TEXT NOT NULL,
    trace_id              TEXT NOT NULL DEFAULT '',
    span_id               TEXT NOT NULL DEFAULT ''
);
CREATE INDEX decisions_by_time ON model_routing_decisions (decided_at);
CREATE INDEX decisions_by_task ON model_routing_decisions (task_id);

CREATE TABLE model_selections (
    decision_id           TEXT NOT NULL,
    attempt_index         INTEGER NOT NULL,
    model                 TEXT NOT NULL,
    provider              TEXT NOT NULL,
    status                TEXT NOT NULL,
    error_type            TEXT NOT NULL DEFAULT '',
    started_at            DOUBLE PRECISION,
    duration_s            DOUBLE PRECISION NOT NULL,
    input_tokens          BIGINT NOT NULL,
    output_tokens         BIGINT NOT NULL,
    estimated_cost_micros BIGINT NOT NULL,
    actual_cost_micros    BIGINT NOT NULL,
    UNIQUE (decision_id, attempt_index)
);
CREATE INDEX selections_by_provider ON model_selections (provider);

CREATE TABLE decision_outcomes (
    decision_id           TEXT PRIMARY KEY,
    success               BOOLEAN NOT NULL,
    quality               DOUBLE PRECISION,
    actual_cost_micros    BIGINT NOT NULL,
    reported_at           DOUBLE PRECISION NOT NULL
);

CREATE TABLE model_performance (
    task_type             TEXT NOT NULL,
    model                 TEXT NOT NULL,
    window_start          DOUBLE PRECISION NOT NULL,
    decisions             BIGINT NOT NULL DEFAULT 0,
    successes             BIGINT NOT NULL DEFAULT 0,
    failures              BIGINT NOT NULL DEFAULT 0,
    quality_sum           DOUBLE PRECISION NOT NULL DEFAULT 0,
    quality_count         BIGINT NOT NULL DEFAULT 0,
    latency_sum_s         DOUBLE PRECISION NOT NULL DEFAULT 0,
    cost_sum_micros       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (task_type, model, window_start)
);

CREATE TABLE budget_ledger (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind                  TEXT NOT NULL CHECK (kind IN ('reserve', 'settle', 'release', 'expire')),
    reservation_id        TEXT NOT NULL,
    scope                 TEXT NOT NULL,
    period                TEXT NOT NULL,
    period_start          DOUBLE PRECISION NOT NULL,
    period_end            DOUBLE PRECISION NOT NULL,
    amount_micros         BIGINT NOT NULL,
    at                    DOUBLE PRECISION NOT NULL,
    expires_at            DOUBLE PRECISION
);
CREATE INDEX ledger_by_bucket ON budget_ledger (scope, period_start);
CREATE INDEX ledger_by_reservation ON budget_ledger (reservation_id);
CREATE INDEX ledger_by_period_end ON budget_ledger (period_end);

CREATE TABLE routing_policies (
    config_hash           TEXT PRIMARY KEY,
    config_json           TEXT NOT NULL,
    loaded_at             DOUBLE PRECISION NOT NULL
);
"""

# Snapshots of the online estimators (provider health, learned quality), one row per book.
_V2 = """
CREATE TABLE learned_state (
    book                  TEXT PRIMARY KEY,
    state_json            TEXT NOT NULL,
    updated_at            DOUBLE PRECISION NOT NULL
);
"""

# Attempts on a model the decision's plan did not name (the orchestrator improvised).
_V3 = """
ALTER TABLE model_selections ADD COLUMN off_plan BOOLEAN NOT NULL DEFAULT false;
"""

# The admin HTTP API: policy edits (each producing a config version in routing_policies),
# models an operator paused, and spend by the hour it was reported in.
_V4 = """
CREATE TABLE routing_policy_changes (
    version               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    policy                TEXT NOT NULL,
    action                TEXT NOT NULL CHECK (action IN ('set', 'revert')),
    policy_json           TEXT NOT NULL,
    config_hash           TEXT NOT NULL,
    changed_at            DOUBLE PRECISION NOT NULL
);

CREATE TABLE model_pauses (
    model                 TEXT PRIMARY KEY,
    paused_at             DOUBLE PRECISION NOT NULL,
    reason                TEXT NOT NULL DEFAULT ''
);

CREATE INDEX outcomes_by_time ON decision_outcomes (reported_at);
"""

# Later grades of recorded decisions (execute mode: ReportOutcome with only a quality), at
# most one per decision; the graded quality is also copied into decision_outcomes.quality.
_V5 = """
CREATE TABLE decision_grades (
    decision_id           TEXT PRIMARY KEY,
    model                 TEXT NOT NULL,
    quality               DOUBLE PRECISION NOT NULL,
    graded_at             DOUBLE PRECISION NOT NULL
);
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5)
SCHEMA_VERSION = len(MIGRATIONS)

_VERSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version               INTEGER PRIMARY KEY,
    applied_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_by            TEXT NOT NULL DEFAULT current_setting('application_name')
)
"""


async def schema_version(conn: asyncpg.Connection) -> int:
    """The highest version applied, 0 for a new database."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))


async def migrate(conn: asyncpg.Connection) -> tuple[int, ...]:
    """Apply every pending script under the advisory lock; return the versions this call applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY, timeout=LOCK_WAIT_S)
    try:
        await conn.execute(_VERSIONS_TABLE)
        version = await schema_version(conn)
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database schema version {version} is newer than this build's {SCHEMA_VERSION}"
            )
        applied = []
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            async with conn.transaction():
                await conn.execute(script)
                # A plain INSERT: were the lock ever bypassed, a second apply fails loudly.
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)
            applied.append(number)
        return tuple(applied)
    finally:
        if not conn.is_closed():  # a closed session has released its lock already
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
