"""Schema migrations keyed by `PRAGMA user_version`: script N brings the file to version N.

Scripts only ever get appended. Each one uses IF NOT EXISTS (or, for a new column, checks
the table first), so re-running it is harmless, and
each runs in its own transaction together with the version bump, so a crash mid-migration
leaves the previous version intact. Tables are STRICT (SQLite >= 3.37) so a float can never
slip into a micro-USD column.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import aiosqlite

from routing_sidecar.errors import StorageError

_V1 = """
CREATE TABLE IF NOT EXISTS model_routing_decisions (
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
    estimated_cost_micros INTEGER NOT NULL,
    reason                TEXT NOT NULL,
    alternatives_json     TEXT NOT NULL,
    fallbacks_json        TEXT NOT NULL,
    labels_json           TEXT NOT NULL,
    dry_run               INTEGER NOT NULL,
    decided_at            REAL NOT NULL,
    config_hash           TEXT NOT NULL,
    trace_id              TEXT NOT NULL DEFAULT '',
    span_id               TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX IF NOT EXISTS decisions_by_time ON model_routing_decisions (decided_at);
CREATE INDEX IF NOT EXISTS decisions_by_task ON model_routing_decisions (task_id);

CREATE TABLE IF NOT EXISTS model_selections (
    decision_id           TEXT NOT NULL,
    attempt_index         INTEGER NOT NULL,
    model                 TEXT NOT NULL,
    provider              TEXT NOT NULL,
    status                TEXT NOT NULL,
    error_type            TEXT NOT NULL DEFAULT '',
    started_at            REAL,
    duration_s            REAL NOT NULL,
    input_tokens          INTEGER NOT NULL,
    output_tokens         INTEGER NOT NULL,
    estimated_cost_micros INTEGER NOT NULL,
    actual_cost_micros    INTEGER NOT NULL,
    UNIQUE (decision_id, attempt_index)
) STRICT;
CREATE INDEX IF NOT EXISTS selections_by_provider ON model_selections (provider);

CREATE TABLE IF NOT EXISTS decision_outcomes (
    decision_id           TEXT PRIMARY KEY,
    success               INTEGER NOT NULL,
    quality               REAL,
    actual_cost_micros    INTEGER NOT NULL,
    reported_at           REAL NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS model_performance (
    task_type             TEXT NOT NULL,
    model                 TEXT NOT NULL,
    window_start          REAL NOT NULL,
    decisions             INTEGER NOT NULL DEFAULT 0,
    successes             INTEGER NOT NULL DEFAULT 0,
    failures              INTEGER NOT NULL DEFAULT 0,
    quality_sum           REAL NOT NULL DEFAULT 0,
    quality_count         INTEGER NOT NULL DEFAULT 0,
    latency_sum_s         REAL NOT NULL DEFAULT 0,
    cost_sum_micros       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_type, model, window_start)
) STRICT;

CREATE TABLE IF NOT EXISTS budget_ledger (
    id                    INTEGER PRIMARY KEY,
    kind                  TEXT NOT NULL CHECK (kind IN ('reserve', 'settle', 'release', 'expire')),
    reservation_id        TEXT NOT NULL,
    scope                 TEXT NOT NULL,
    period                TEXT NOT NULL,
    period_start          REAL NOT NULL,
    period_end            REAL NOT NULL,
    amount_micros         INTEGER NOT NULL,
    at                    REAL NOT NULL,
    expires_at            REAL
) STRICT;
CREATE INDEX IF NOT EXISTS ledger_by_bucket ON budget_ledger (scope, period_start);
CREATE INDEX IF NOT EXISTS ledger_by_reservation ON budget_ledger (reservation_id);
CREATE INDEX IF NOT EXISTS ledger_by_period_end ON budget_ledger (period_end);

CREATE TABLE IF NOT EXISTS routing_policies (
    config_hash           TEXT PRIMARY KEY,
    config_json           TEXT NOT NULL,
    loaded_at             REAL NOT NULL
) STRICT;
"""

# Snapshots of the online estimators (provider health, learned quality), one row per book, so
# a restart resumes from what was learned; model_performance keeps the windowed history.
_V2 = """
CREATE TABLE IF NOT EXISTS learned_state (
    book                  TEXT PRIMARY KEY,
    state_json            TEXT NOT NULL,
    updated_at            REAL NOT NULL
) STRICT;
"""


@dataclass(frozen=True, slots=True)
class AddColumn:
    """A column added to an existing table (SQLite has no ADD COLUMN IF NOT EXISTS)."""

    table: str
    column: str
    declaration: str

    async def sql(self, conn: aiosqlite.Connection) -> str:
        """The ALTER TABLE statement, or nothing when the column is already there."""
        rows = await conn.execute_fetchall(f"PRAGMA table_info({self.table})")
        if any(r[1] == self.column for r in rows):
            return ""
        return self.unconditional()

    def unconditional(self) -> str:
        """The ALTER TABLE statement, for a table known to lack the column."""
        return f"ALTER TABLE {self.table} ADD COLUMN {self.column} {self.declaration};"


# Attempts on a model the decision's plan did not name (the orchestrator improvised).
_V3 = AddColumn("model_selections", "off_plan", "INTEGER NOT NULL DEFAULT 0")


# The admin HTTP API: policy edits (each producing a config version in routing_policies),
# models an operator paused, and spend by the hour it was reported in.
_V4 = """
CREATE TABLE IF NOT EXISTS routing_policy_changes (
    version               INTEGER PRIMARY KEY,
    policy                TEXT NOT NULL,
    action                TEXT NOT NULL CHECK (action IN ('set', 'revert')),
    policy_json           TEXT NOT NULL,
    config_hash           TEXT NOT NULL,
    changed_at            REAL NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS model_pauses (
    model                 TEXT PRIMARY KEY,
    paused_at             REAL NOT NULL,
    reason                TEXT NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX IF NOT EXISTS outcomes_by_time ON decision_outcomes (reported_at);
"""

# Later grades of recorded decisions (execute mode: ReportOutcome with only a quality), at
# most one per decision; the graded quality is also copied into decision_outcomes.quality.
_V5 = """
CREATE TABLE IF NOT EXISTS decision_grades (
    decision_id           TEXT PRIMARY KEY,
    model                 TEXT NOT NULL,
    quality               REAL NOT NULL,
    graded_at             REAL NOT NULL
) STRICT;
"""

# The response cache: entries (least-recently-used by last_used_at), decision-mode stores
# waiting for their outcome, and hourly lookup counts per (namespace, policy, project).
_V6 = """
CREATE TABLE IF NOT EXISTS cache_entries (
    key                   TEXT PRIMARY KEY,
    namespace             TEXT NOT NULL,
    project               TEXT NOT NULL,
    policy                TEXT NOT NULL,
    value                 BLOB NOT NULL,
    chunks_json           TEXT NOT NULL DEFAULT '[]',
    source_decision_id    TEXT NOT NULL,
    model                 TEXT NOT NULL,
    provider              TEXT NOT NULL,
    cost_micros           INTEGER NOT NULL,
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    finish_reason         TEXT NOT NULL DEFAULT '',
    size_bytes            INTEGER NOT NULL,
    created_at            REAL NOT NULL,
    expires_at            REAL NOT NULL,
    last_used_at          REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS cache_by_expiry ON cache_entries (expires_at);
CREATE INDEX IF NOT EXISTS cache_by_use ON cache_entries (last_used_at);
CREATE INDEX IF NOT EXISTS cache_by_tenant ON cache_entries (project, namespace);

CREATE TABLE IF NOT EXISTS cache_pending (
    decision_id           TEXT PRIMARY KEY,
    key                   TEXT NOT NULL,
    namespace             TEXT NOT NULL,
    project               TEXT NOT NULL,
    policy                TEXT NOT NULL,
    expires_at            REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS cache_pending_by_expiry ON cache_pending (expires_at);

CREATE TABLE IF NOT EXISTS cache_usage (
    window_start          REAL NOT NULL,
    namespace             TEXT NOT NULL,
    policy                TEXT NOT NULL,
    project               TEXT NOT NULL,
    hits                  INTEGER NOT NULL DEFAULT 0,
    misses                INTEGER NOT NULL DEFAULT 0,
    stores                INTEGER NOT NULL DEFAULT 0,
    saved_micros          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (window_start, namespace, policy, project)
) STRICT;
"""

# Bytes on disk per decision: the ledger's three indexes held a quarter of what a decision
# cost, and no query needs them: every ledger query reads the table whole anyway (the restore
# at start, the totals, the prune's list of closed reservations). No query looks decisions
# up by task either.
_V7 = """
DROP INDEX IF EXISTS ledger_by_bucket;
DROP INDEX IF EXISTS ledger_by_reservation;
DROP INDEX IF EXISTS ledger_by_period_end;
DROP INDEX IF EXISTS decisions_by_task;
"""

MIGRATIONS: tuple[str | AddColumn, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)
SCHEMA_VERSION = len(MIGRATIONS)


async def schema_version(conn: aiosqlite.Connection) -> int:
    """The file's `PRAGMA user_version`."""
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


async def migrate(conn: aiosqlite.Connection) -> int:
    """Apply every pending script, each in its own transaction; return the version reached.

    A new, empty file gets the whole schema in one transaction instead: one commit (and one
    WAL sync) rather than one per script, which is most of a first start's store opening.
    """
    rows = list(await conn.execute_fetchall(
        "SELECT (SELECT user_version FROM pragma_user_version),"
        " (SELECT count(*) FROM sqlite_master)"))
    version, objects = int(rows[0][0]), int(rows[0][1])
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"database schema version {version} is newer than this build's {SCHEMA_VERSION}"
        )
    if version == 0 and objects == 0:
        if await _create_schema(conn):
            return SCHEMA_VERSION
        version = await schema_version(conn)  # another process created the schema meanwhile
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        script = step if isinstance(step, str) else await step.sql(conn)
        try:
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
        except Exception:
            await conn.rollback()
            raise
    return SCHEMA_VERSION


async def _create_schema(conn: aiosqlite.Connection) -> bool:
    """Every script on an empty file in one transaction; False if another process was first.

    The same statements in the same order as one script at a time. A process that created
    the schema first (a shared file, such as a local response cache) makes the column
    added by an AddColumn step a duplicate here: nothing is kept, and the caller goes on
    step by step from the version the file now has.
    """
    script = "\n".join(step if isinstance(step, str) else step.unconditional()
                       for step in MIGRATIONS)
    try:
        await conn.executescript(
            f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
    except sqlite3.OperationalError as exc:
        await conn.rollback()
        if "duplicate column" not in str(exc):
            raise
        return False
    return True
