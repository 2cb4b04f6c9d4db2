"""The routing matrix queries over the audit tables (SQLite dialect, JSON1 for labels)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from routing_sidecar.records import RoutingStats
from routing_sidecar.storage.rows import assemble_stats

Rows = Callable[[str, Sequence[object]], Awaitable[list[Any]]]

# Routed, non-dry-run decisions in the window, with the outcome's actual cost when reported.
_WINDOW = """
FROM model_routing_decisions d
LEFT JOIN decision_outcomes o ON o.decision_id = d.decision_id
WHERE d.decided_at >= ? AND d.dry_run = 0 AND d.chosen_model IS NOT NULL
"""

_BY_MODEL_TASK = f"""
SELECT d.chosen_model, d.task_type, COUNT(*), SUM(d.estimated_cost_micros),
       COALESCE(SUM(o.actual_cost_micros), 0)
{_WINDOW}
GROUP BY d.chosen_model, d.task_type ORDER BY d.chosen_model, d.task_type
"""

_BY_MODEL_LABEL = """
SELECT d.chosen_model, j.key, CAST(j.value AS TEXT), COUNT(*), SUM(d.estimated_cost_micros),
       COALESCE(SUM(o.actual_cost_micros), 0)
FROM model_routing_decisions d
JOIN json_each(d.labels_json) j
LEFT JOIN decision_outcomes o ON o.decision_id = d.decision_id
WHERE d.decided_at >= ? AND d.dry_run = 0 AND d.chosen_model IS NOT NULL AND j.key IN ({keys})
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""

# A fallback decision is one whose reported outcome took more than one attempt.
_DECISIONS_BY_PROVIDER = f"""
SELECT d.chosen_provider, COUNT(*),
       SUM((SELECT COUNT(*) FROM model_selections s WHERE s.decision_id = d.decision_id) > 1)
{_WINDOW}
GROUP BY d.chosen_provider
"""

# Attempts count against the provider that served them, which after a fallback is not the
# provider first chosen.
_ATTEMPTS_BY_PROVIDER = """
SELECT s.provider, COUNT(*), SUM(s.status <> 'SUCCESS'), SUM(s.input_tokens),
       SUM(s.output_tokens), SUM(s.actual_cost_micros)
FROM model_selections s
JOIN model_routing_decisions d ON d.decision_id = s.decision_id
WHERE d.decided_at >= ? AND d.dry_run = 0
GROUP BY s.provider
"""


async def routing_stats(rows: Rows, since: float, label_keys: Sequence[str]) -> RoutingStats:
    """Per (model, task type), per (model, label) and per provider cells since a time."""
    by_label: list[Any] = []
    keys = tuple(dict.fromkeys(label_keys))
    if keys:
        sql = _BY_MODEL_LABEL.format(keys=", ".join("?" * len(keys)))
        by_label = await rows(sql, (since, *keys))
    return assemble_stats(
        since, await rows(_BY_MODEL_TASK, (since,)), by_label,
        await rows(_DECISIONS_BY_PROVIDER, (since,)), await rows(_ATTEMPTS_BY_PROVIDER, (since,)),
    )
