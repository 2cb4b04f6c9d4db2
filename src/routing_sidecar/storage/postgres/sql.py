"""Every statement and query of the PostgreSQL store, in PostgreSQL's dialect.

Sums of BIGINT columns come back as numeric, so each is cast back to BIGINT; text sorts in
"C" collation so the order is the database's bytes, whatever locale it was created with, and
the same as SQLite's.
"""

from __future__ import annotations

from routing_sidecar.storage.rows import (
    DECISION_COLUMNS,
    GRADE_COLUMNS,
    LEDGER_COLUMNS,
    OUTCOME_COLUMNS,
    PERFORMANCE_KEY,
    SELECTION_COLUMNS,
    dollars,
    insert,
    upsert_performance,
)

INSERT_DECISION = insert("model_routing_decisions", DECISION_COLUMNS, dollars)
INSERT_SELECTION = insert("model_selections", SELECTION_COLUMNS, dollars)
INSERT_OUTCOME = insert("decision_outcomes", OUTCOME_COLUMNS, dollars)
INSERT_LEDGER = insert("budget_ledger", LEDGER_COLUMNS, dollars)
INSERT_CONFIG = insert("routing_policies", ("config_hash", "config_json", "loaded_at"), dollars,
                       " ON CONFLICT (config_hash) DO NOTHING")
UPSERT_PERFORMANCE = upsert_performance(dollars)
INSERT_GRADE = insert("decision_grades", GRADE_COLUMNS, dollars)
COPY_GRADE = "UPDATE decision_outcomes SET quality = $1 WHERE decision_id = $2 AND quality IS NULL"
UPSERT_LEARNED = (
    "INSERT INTO learned_state (book, state_json, updated_at) VALUES ($1, $2, $3) "
    "ON CONFLICT (book) DO UPDATE SET state_json = excluded.state_json, "
    "updated_at = excluded.updated_at"
)

# Statements that lock a row by key (a unique index or an upsert), with the length of that key
# at the head of their parameters. Sidecars sharing the database write them in key order, so
# two batches touching the same keys wait for each other instead of deadlocking.
KEYED: dict[str, int] = {
    INSERT_OUTCOME: 1,
    INSERT_GRADE: 1,
    INSERT_CONFIG: 1,
    UPSERT_LEARNED: 1,
    UPSERT_PERFORMANCE: len(PERFORMANCE_KEY),
}


def once_lookup(table: str, column: str) -> str:
    """Which of a batch's `Once` keys (one text[] parameter) are already stored."""
    return f"SELECT {column} FROM {table} WHERE {column} = ANY($1::text[])"


GET_DECISION = (f"SELECT {', '.join(DECISION_COLUMNS)} FROM model_routing_decisions "
                "WHERE decision_id = $1")
GET_OUTCOME = (f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM decision_outcomes "
               "WHERE decision_id = $1")
GET_ATTEMPTS = (f"SELECT {', '.join(SELECTION_COLUMNS)} FROM model_selections "
                "WHERE decision_id = $1 ORDER BY attempt_index")
LOAD_LEARNED = "SELECT state_json FROM learned_state WHERE book = $1"
LOAD_LEDGER = f"SELECT {', '.join(LEDGER_COLUMNS)} FROM budget_ledger ORDER BY id"
LEDGER_TOTALS = """
SELECT scope, period, period_start, kind, SUM(amount_micros)::bigint FROM budget_ledger
GROUP BY scope, period, period_start, kind
ORDER BY scope COLLATE "C", period COLLATE "C", period_start, kind COLLATE "C"
"""

# One chunk of old decisions with their attempts and outcomes, in one statement. SKIP LOCKED:
# sidecars pruning the same database at once share the work rather than queue for it.
PRUNE_DECISIONS = """
WITH doomed AS (
    SELECT decision_id FROM model_routing_decisions WHERE decided_at < $1
    ORDER BY decided_at LIMIT $2 FOR UPDATE SKIP LOCKED
), selections AS (
    DELETE FROM model_selections WHERE decision_id IN (SELECT decision_id FROM doomed)
), outcomes AS (
    DELETE FROM decision_outcomes WHERE decision_id IN (SELECT decision_id FROM doomed)
), grades AS (
    DELETE FROM decision_grades WHERE decision_id IN (SELECT decision_id FROM doomed)
)
DELETE FROM model_routing_decisions WHERE decision_id IN (SELECT decision_id FROM doomed)
"""

# Only reservations already closed (released, expired or settled) lose rows, so a restore
# never sees a closing row without the reserve row it closes.
PRUNE_LEDGER = """
DELETE FROM budget_ledger WHERE period_end <= $1 AND reservation_id IN
    (SELECT reservation_id FROM budget_ledger WHERE kind <> 'reserve')
"""

# -- the routing matrix -------------------------------------------------------------------------

# Routed, non-dry-run decisions in the window, with the outcome's actual cost when reported.
_WINDOW = """
FROM model_routing_decisions d
LEFT JOIN decision_outcomes o ON o.decision_id = d.decision_id
WHERE d.decided_at >= $1 AND NOT d.dry_run AND d.chosen_model IS NOT NULL
"""
_COSTS = ("SUM(d.estimated_cost_micros)::bigint, "
          "COALESCE(SUM(o.actual_cost_micros), 0)::bigint")

STATS_BY_MODEL_TASK = f"""
SELECT d.chosen_model, d.task_type, COUNT(*), {_COSTS}
{_WINDOW}
GROUP BY d.chosen_model, d.task_type
ORDER BY d.chosen_model COLLATE "C", d.task_type COLLATE "C"
"""

# $2: the label keys asked for, as text[].
STATS_BY_MODEL_LABEL = f"""
SELECT d.chosen_model, j.key, j.value, COUNT(*), {_COSTS}
FROM model_routing_decisions d
CROSS JOIN LATERAL jsonb_each_text(d.labels_json) j
LEFT JOIN decision_outcomes o ON o.decision_id = d.decision_id
WHERE d.decided_at >= $1 AND NOT d.dry_run AND d.chosen_model IS NOT NULL
  AND j.key = ANY($2::text[])
GROUP BY d.chosen_model, j.key, j.value
ORDER BY d.chosen_model COLLATE "C", j.key COLLATE "C", j.value COLLATE "C"
"""

# A fallback decision is one whose reported outcome took more than one attempt.
STATS_DECISIONS_BY_PROVIDER = f"""
SELECT d.chosen_provider, COUNT(*),
       COUNT(*) FILTER (WHERE (SELECT COUNT(*) FROM model_selections s
                               WHERE s.decision_id = d.decision_id) > 1)
{_WINDOW}
GROUP BY d.chosen_provider
"""

# Attempts count against the provider that served them, which after a fallback is not the
# provider first chosen.
STATS_ATTEMPTS_BY_PROVIDER = """
SELECT s.provider, COUNT(*), COUNT(*) FILTER (WHERE s.status <> 'SUCCESS'),
       SUM(s.input_tokens)::bigint, SUM(s.output_tokens)::bigint,
       SUM(s.actual_cost_micros)::bigint
FROM model_selections s
JOIN model_routing_decisions d ON d.decision_id = s.decision_id
WHERE d.decided_at >= $1 AND NOT d.dry_run
GROUP BY s.provider
"""
