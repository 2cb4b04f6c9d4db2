"""A decision's alternatives and fallbacks as the audit row keeps them and reads them back."""

from __future__ import annotations

import dataclasses

import orjson

from routing_sidecar import domain
from routing_sidecar.records import (
    ALTERNATIVE_FIELDS,
    FALLBACK_FIELDS,
    DecisionRecord,
    stored_alternatives,
    stored_fallbacks,
)

PLAIN = domain.Alternative("gpt-5-mini", "openai", 1, 0.815, 14_500, domain.Rejection.CHOSEN,
                           "chosen: best score", 0.74)
ON_SLOT = dataclasses.replace(PLAIN, model="glm-4.6", slot_id="w2",
                              rejection=domain.Rejection.OUTSCORED, reason="outscored")
VALUED = dataclasses.replace(PLAIN, model="claude-opus-4-1", net_value_micros=-12_345,
                             rejection=domain.Rejection.OUTSCORED, reason="less net value")
FALLBACKS = (domain.Fallback("glm-4.6", "zhipu", 1, 9_000, slot_id="w2"),
             domain.Fallback("claude-haiku-4-5", "anthropic", 1, 55_000))


def record() -> DecisionRecord:
    sel = domain.Selection(
        domain.DecisionStatus.ROUTED, domain.ReasonCode.SELECTED, "code",
        domain.Objective.BALANCED, "gpt-5-mini is the cheapest capable model",
        (PLAIN, ON_SLOT, VALUED), chosen=PLAIN, fallbacks=FALLBACKS)
    task = domain.Task(task_id="t1", task_type="fix_bug", labels={"project": "alpha"})
    return DecisionRecord.from_decision(domain.Decision("d1", "t1", 1.0, sel), task, "cfg")


def as_dict(obj: object, fields: tuple[str, ...]) -> dict[str, object]:
    return {f: getattr(obj, f) for f in fields}


def test_every_field_of_every_alternative_and_fallback_reads_back() -> None:
    rec = record()
    assert stored_alternatives(rec) == [as_dict(a, ALTERNATIVE_FIELDS)
                                        for a in (PLAIN, ON_SLOT, VALUED)]
    assert stored_fallbacks(rec) == [as_dict(f, FALLBACK_FIELDS) for f in FALLBACKS]


def test_rows_are_arrays_without_the_field_names_and_without_unset_tails() -> None:
    rec = record()
    plain, on_slot, valued = orjson.loads(rec.alternatives_json)
    assert len(plain) == 8 and on_slot[-1] == "w2" and valued[-2:] == [None, -12_345]
    objects = orjson.dumps([PLAIN, ON_SLOT, VALUED])  # the form of earlier builds
    assert len(rec.alternatives_json) < len(objects) / 2


def test_rows_written_as_objects_by_an_earlier_build_read_back_the_same() -> None:
    new = record()
    old = dataclasses.replace(
        new, alternatives_json=orjson.dumps([PLAIN, ON_SLOT, VALUED]).decode(),
        fallbacks_json=orjson.dumps(FALLBACKS).decode())
    assert stored_alternatives(old) == stored_alternatives(new)
    assert stored_fallbacks(old) == stored_fallbacks(new)
