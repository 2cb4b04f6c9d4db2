"""The admin API's queries in PostgreSQL's dialect (the SQLite ones are storage/queries.py).

Text sorts in "C" collation, as in the other statements, so both stores answer alike.
"""

from __future__ import annotations

from routing_sidecar.storage.queries import MAX_LABEL_KEYS
from routing_sidecar.storage.rows import DECISION_COLUMNS, OUTCOME_COLUMNS, SELECTION_COLUMNS

# $1: model or NULL, $2: task type or NULL, $3: how many.
LIST_DECISIONS = f"""
SELECT {', '.join(DECISION_COLUMNS)} FROM model_routing_decisions
WHERE ($1::text IS NULL OR chosen_model = $1) AND ($2::text IS NULL OR task_type = $2)
ORDER BY decided_at DESC LIMIT $3
"""
GET_DECISION = (f"SELECT {', '.join(DECISION_COLUMNS)} FROM model_routing_decisions "
                "WHERE decision_id = $1")
OUTCOMES_OF = (f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM decision_outcomes "
               "WHERE decision_id = ANY($1::text[])")
ATTEMPTS_OF = (f"SELECT {', '.join(SELECTION_COLUMNS)} FROM model_selections "
               "WHERE decision_id = ANY($1::text[]) ORDER BY decision_id, attempt_index")

# A fallback decision is one whose reported outcome took more than one attempt (as in stats).
_FALLBACK = ("COUNT(*) FILTER (WHERE (SELECT COUNT(*) FROM model_selections s "
             "WHERE s.decision_id = d.decision_id) > 1)")
FALLBACKS_BY_TASK = f"""
SELECT d.chosen_model, d.task_type, {_FALLBACK}
FROM model_routing_decisions d
WHERE d.decided_at >= $1 AND NOT d.dry_run AND d.chosen_model IS NOT NULL
GROUP BY d.chosen_model, d.task_type
ORDER BY d.chosen_model COLLATE "C", d.task_type COLLATE "C"
"""
FALLBACKS_BY_LABEL = f"""
SELECT d.chosen_model, j.value, {_FALLBACK}
FROM model_routing_decisions d CROSS JOIN LATERAL jsonb_each_text(d.labels_json) j
WHERE d.decided_at >= $1 AND NOT d.dry_run AND d.chosen_model IS NOT NULL AND j.key = $2
GROUP BY d.chosen_model, j.value
ORDER BY d.chosen_model COLLATE "C", j.value COLLATE "C"
"""
LABEL_KEYS = f"""
SELECT k.key FROM (
    SELECT DISTINCT jsonb_object_keys(labels_json) AS key FROM model_routing_decisions
    WHERE decided_at >= $1 AND NOT dry_run
) k ORDER BY k.key COLLATE "C" LIMIT {MAX_LABEL_KEYS}
"""
# $1: bucket seconds, $2: since.
DECISIONS_PER_BUCKET = """
SELECT floor(decided_at / $1)::bigint, COUNT(*),
       COALESCE(SUM(CASE WHEN chosen_model IS NULL THEN 0 ELSE estimated_cost_micros END),
                0)::bigint
FROM model_routing_decisions WHERE decided_at >= $2 AND NOT dry_run GROUP BY 1
"""
# Spend is counted when it is reported, as the ledger charges it.
SPEND_PER_BUCKET = """
SELECT floor(o.reported_at / $1)::bigint, SUM(o.actual_cost_micros)::bigint
FROM decision_outcomes o JOIN model_routing_decisions d ON d.decision_id = o.decision_id
WHERE o.reported_at >= $2 AND NOT d.dry_run GROUP BY 1
"""
INSERT_CONFIG_VERSION = (
    "INSERT INTO routing_policies (config_hash, config_json, loaded_at) VALUES ($1, $2, $3) "
    "ON CONFLICT (config_hash) DO NOTHING"
)
INSERT_POLICY_CHANGE = (
    "INSERT INTO routing_policy_changes (policy, action, policy_json, config_hash, changed_at) "
    "VALUES ($1, $2, $3, $4, $5) RETURNING version"
)
POLICY_CHANGES = (
    "SELECT policy, action, policy_json, config_hash, changed_at, version "
    "FROM routing_policy_changes ORDER BY version"
)
UPSERT_PAUSE = (
    "INSERT INTO model_pauses (model, paused_at, reason) VALUES ($1, $2, $3) "
    "ON CONFLICT (model) DO UPDATE SET paused_at = excluded.paused_at, reason = excluded.reason"
)
DELETE_PAUSE = "DELETE FROM model_pauses WHERE model = $1"
PAUSES = 'SELECT model, paused_at, reason FROM model_pauses ORDER BY model COLLATE "C"'
