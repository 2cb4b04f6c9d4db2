"""A decision's alternatives and fallbacks as the audit row keeps them and reads them back."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from routing_sidecar import domain
from routing_sidecar.core import reasons
from routing_sidecar.records import (
    ALTERNATIVE_FIELDS,
    FALLBACK_FIELDS,
    MARK,
    DecisionRecord,
    stored_alternatives,
    stored_fallbacks,
    stored_reason,
)
from routing_sidecar.storage.rows import DECISION_COLUMNS, decision_from_row, params
from tests.store_records import OLD_ALTERNATIVES, OLD_FALLBACKS, OLD_REASON

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


# -- sentences stored as codes (core/reasons.py) ----------------------------------------------

def old_row() -> DecisionRecord:
    return dataclasses.replace(
        record(), task_type="fix_bug", policy="code", reason=OLD_REASON,
        alternatives_json=OLD_ALTERNATIVES, fallbacks_json=OLD_FALLBACKS)


def test_a_row_of_the_previous_build_reads_back_its_sentences() -> None:
    old = old_row()
    alts = stored_alternatives(old)
    assert [a["rejection"] for a in alts] == [
        "tier_reserved", "fallback", "chosen", "fallback", "outscored"]
    assert alts[0]["reason"] == "tier 2 reserved: no ev given and priority 60 < 95"
    assert alts[4]["reason"] == "score 0.7225 below chosen 0.765"
    assert stored_fallbacks(old)[1] == {"model": "glm-4.6", "provider": "zhipu", "tier": 1,
                                        "estimated_cost_micros": 11_600, "slot_id": None}
    assert stored_reason(old) == OLD_REASON
    assert decision_from_row(params(old, DECISION_COLUMNS)).reason == OLD_REASON


def test_the_same_decision_written_now_reads_back_identical_and_smaller() -> None:
    old = old_row()
    alts = [domain.Alternative(**{**a, "rejection": domain.Rejection(a["rejection"])})
            for a in stored_alternatives(old)]
    fallbacks = tuple(domain.Fallback(**f) for f in stored_fallbacks(old))
    sel = domain.Selection(domain.DecisionStatus.ROUTED, domain.ReasonCode.SELECTED, "code",
                           domain.Objective.BALANCED, OLD_REASON, tuple(alts), alts[2],
                           fallbacks)
    task = domain.Task(task_id="t1", task_type="fix_bug")
    new = DecisionRecord.from_decision(domain.Decision("d1", "t1", 1.0, sel), task, "cfg")
    assert stored_alternatives(new) == stored_alternatives(old)
    assert stored_fallbacks(new) == stored_fallbacks(old)
    assert new.reason.startswith(MARK) and stored_reason(new) == OLD_REASON
    assert orjson.loads(new.fallbacks_json) == [1, 3]
    assert all(isinstance(a[5], int) for a in orjson.loads(new.alternatives_json))
    stored = len(new.reason) + len(new.alternatives_json) + len(new.fallbacks_json)
    assert stored < (len(OLD_REASON) + len(OLD_ALTERNATIVES) + len(OLD_FALLBACKS)) / 2


TOP = domain.Alternative("m0", "p0", 1, 0.8, 1_000, domain.Rejection.CHOSEN,
                         "chosen: best score", 0.7, net_value_micros=41_000)


def routed(*alts: domain.Alternative, reason: str = "why",
           top: domain.Alternative = TOP) -> DecisionRecord:
    sel = domain.Selection(domain.DecisionStatus.ROUTED, domain.ReasonCode.SELECTED, "code",
                           domain.Objective.BALANCED, reason, (top, *alts), top)
    task = domain.Task(task_id="t1", task_type="fix_bug")
    return DecisionRecord.from_decision(domain.Decision("d1", "t1", 1.0, sel), task, "cfg")


def other(rejection: domain.Rejection, reason: str, **kw: object) -> domain.Alternative:
    kw.setdefault("model", "m1")
    return dataclasses.replace(TOP, rejection=rejection, reason=reason,
                               **kw)  # type: ignore[arg-type]


R = domain.Rejection


@pytest.mark.parametrize(("rejection", "reason", "kw", "coded"), [
    (R.FALLBACK, reasons.fallback(3, True), {}, True),
    (R.FALLBACK, reasons.fallback(1, False), {}, True),
    (R.FALLBACK, "fallback x: different provider", {}, False),
    (R.OUTSCORED, reasons.below(0.61234, 0.8), {"score": 0.61234}, True),
    (R.OUTSCORED, reasons.below(0.5, 0.7), {"score": 0.5}, False),  # not the chosen's score
    (R.OUTSCORED, reasons.ties(0.8), {}, True),
    (R.OUTSCORED, reasons.net_against(-2_000, 41_000), {"net_value_micros": -2_000}, True),
    (R.OUTSCORED, reasons.below(0.6, 0.8) + "; proven: 0.71 (n=3, lower bound 0.62) meets "
     "floor 0.60", {"score": 0.6}, False),
    (R.TIER_RESERVED, reasons.tier_reserved(3, "ev 0.50 not above recent P90 0.90 and "
                                            "priority 60 < 95"), {"tier": 3}, True),
    (R.TIER_RESERVED, reasons.tier_reserved(2, "why"), {"tier": 3}, False),  # another tier
    (R.CAPABILITY, reasons.lacks("long_context, vision"), {}, True),
    (R.CHOSEN, reasons.chosen(True, True), {}, True),
    (R.BUDGET, "budget project:alpha/month exhausted", {}, False),
    (R.EXCLUDED, "excluded by the request", {}, False),
    (R.OUTSCORED, "", {}, False),
])
def test_each_sentence_reads_back_exactly_coded_or_as_written(
        rejection: domain.Rejection, reason: str, kw: dict[str, object], coded: bool) -> None:
    alt = other(rejection, reason, **kw)
    rec = routed(alt)
    assert stored_alternatives(rec)[1] == as_dict(alt, ALTERNATIVE_FIELDS)
    assert isinstance(orjson.loads(rec.alternatives_json)[1][5], int) is coded


def test_repeated_reservations_store_their_why_once_and_each_reads_back() -> None:
    why = "no ev given and priority 60 < 95"
    alts = [other(R.TIER_RESERVED, reasons.tier_reserved(t, w), tier=t, model=f"m{t}{w[:2]}")
            for t, w in ((2, why), (3, why), (3, "ev 1.00 but too few recent EVs for a P90 "
                                                "and priority 60 < 95"), (2, why))]
    rec = routed(*alts)
    assert stored_alternatives(rec)[1:] == [as_dict(a, ALTERNATIVE_FIELDS) for a in alts]
    assert rec.alternatives_json.count(why) == 2  # again after the other why came between


def test_a_decision_sentence_that_begins_with_the_mark_reads_back_as_written() -> None:
    rec = routed(reason=MARK + "[1,0,0]")
    assert stored_reason(rec) == MARK + "[1,0,0]"
    assert decision_from_row(params(rec, DECISION_COLUMNS)).reason == MARK + "[1,0,0]"
    plain = routed(reason="a sentence of its own")
    assert plain.reason == "a sentence of its own"


def test_a_fallback_no_alternative_repeats_is_kept_whole() -> None:
    sel = domain.Selection(
        domain.DecisionStatus.ROUTED, domain.ReasonCode.SELECTED, "code",
        domain.Objective.BALANCED, "why", (PLAIN, ON_SLOT), PLAIN,
        (domain.Fallback("glm-4.6", "zhipu", 1, 9_000, slot_id="w2"),
         domain.Fallback("glm-4.6", "openai", 1, 14_500, slot_id="w2")))
    rec = DecisionRecord.from_decision(domain.Decision("d1", "t1", 1.0, sel),
                                       domain.Task(task_id="t1", task_type="x"), "cfg")
    assert orjson.loads(rec.fallbacks_json)[0] == ["glm-4.6", "zhipu", 1, 9_000, "w2"]
    assert orjson.loads(rec.fallbacks_json)[1] == 1
    assert stored_fallbacks(rec) == [as_dict(f, FALLBACK_FIELDS) for f in sel.fallbacks]
