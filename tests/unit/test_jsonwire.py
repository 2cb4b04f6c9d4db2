"""Proto3 JSON in and out of the Router messages, and their schemas from the descriptors."""

from __future__ import annotations

from typing import Any

import pytest

from routing_sidecar import domain
from routing_sidecar.errors import InvalidArgument
from routing_sidecar.grpc_api import convert, json_schema, jsonwire
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb


def test_a_route_request_converts_exactly_as_the_grpc_one_does() -> None:
    body = {"taskId": "T-1", "taskType": "fix_bug", "priority": 60,
            "requires": {"minTier": 1, "capabilities": ["code"], "minQuality": 0.5},
            "estimatedInputTokens": "2000", "maxOutputTokens": 800, "labels": {"lane": "x"},
            "ev": 12.5, "objective": "OBJECTIVE_QUALITY", "policy": "code",
            "availableSlots": [{"slotId": "w1", "model": "glm-4.6", "utilisation": 0.25}],
            "excludeModels": ["gpt-5"], "cacheKey": "k", "dryRun": True}
    message = pb.RouteRequest(
        task_id="T-1", task_type="fix_bug", priority=60,
        requires=pb.Requirements(min_tier=1, capabilities=["code"], min_quality=0.5),
        estimated_input_tokens=2000, max_output_tokens=800, labels={"lane": "x"}, ev=12.5,
        objective=pb.OBJECTIVE_QUALITY, policy="code",
        available_slots=[pb.Slot(slot_id="w1", model="glm-4.6", utilisation=0.25)],
        exclude_models=["gpt-5"], cache_key="k", dry_run=True)
    assert jsonwire.task_from_json(body) == convert.task_from_pb(message)


@pytest.mark.parametrize(("body", "field"), [
    ({"priority": True}, "priority"),
    ({"priority": 1e3}, "priority"),  # integral, so parsed; then out of the 0..100 range
    ({"estimatedInputTokens": "12a"}, "estimated_input_tokens"),
    ({"estimatedInputTokens": 2**70}, "estimated_input_tokens"),
    ({"ev": "lots"}, "ev"),
    ({"ev": "NaN"}, "ev"),  # accepted as JSON, refused by the converter as not finite
    ({"dryRun": "yes"}, "dry_run"),
    ({"labels": ["a"]}, "labels"),
    ({"excludeModels": "gpt-5"}, "exclude_models"),
    ({"excludeModels": [None]}, "exclude_models[0]"),
    ({"requires": []}, "requires"),
    ({"objective": 1.5}, "objective"),
    ({"availableSlots": [{"slotId": "w", "model": "m", "extra": 1}]}, "available_slots[0].extra"),
])
def test_each_malformed_field_is_named_by_its_proto_path(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        jsonwire.task_from_json({"taskId": "t", "taskType": "fix_bug", **body})
    assert err.value.field == field, err.value.message
    assert "Error" not in err.value.message and "<class" not in err.value.message


def test_null_means_the_default_and_both_name_styles_work() -> None:
    task = jsonwire.task_from_json({"task_id": "t", "taskType": "fix_bug", "ev": None,
                                    "labels": None, "priority": None})
    assert (task.ev, task.labels, task.priority) == (None, {}, 0)


def test_an_outcome_with_times_and_durations() -> None:
    outcome = jsonwire.outcome_from_json({
        "decisionId": "d1", "success": True, "quality": 0.75, "attempts": [
            {"model": "m", "provider": "p", "status": "ATTEMPT_STATUS_RATE_LIMITED",
             "startedAt": "2026-01-02T03:04:05.5Z", "duration": "1.25s", "retryAfter": "30s",
             "costMicros": "12"}]})
    (a,) = outcome.attempts
    assert (a.status, a.duration_s, a.retry_after_s, a.cost_micros) == (
        domain.AttemptStatus.RATE_LIMITED, 1.25, 30.0, 12)
    assert a.started_at == pytest.approx(1767323045.5)
    for attempt, field in [({"duration": 5}, "attempts[0].duration"),
                           ({"duration": "5 s"}, "attempts[0].duration"),
                           ({"startedAt": 5}, "attempts[0].started_at"),
                           ({"status": "DONE"}, "attempts[0].status")]:
        with pytest.raises(InvalidArgument) as err:
            jsonwire.outcome_from_json({"decisionId": "d1", "attempts": [attempt]})
        assert err.value.field == field


def test_answers_print_every_field_with_64_bit_integers_as_strings() -> None:
    decision = domain.Decision("d1", "t1", 1767323045.0, domain.Selection(
        domain.DecisionStatus.REJECTED, domain.ReasonCode.NO_CAPABLE_MODEL, "code",
        domain.Objective.BALANCED, "nothing fits", ()))
    out = jsonwire.decision_to_json(decision)
    assert out["decisionId"] == "d1" and out["model"] == "" and out["alternatives"] == []
    assert out["estimatedCostMicros"] == "0" and out["status"] == "DECISION_STATUS_REJECTED"
    assert out["decidedAt"] == "2026-01-02T03:04:05Z"


def test_schemas_follow_the_descriptors() -> None:
    schemas = json_schema.schemas([jsonwire.ROUTE_REQUEST, jsonwire.OUTCOME])
    assert set(schemas) == {"routing_sidecar.v1." + n for n in (
        "RouteRequest", "Requirements", "Slot", "Outcome", "Attempt")}
    route = schemas[jsonwire.ROUTE_REQUEST]["properties"]
    assert route["priority"]["type"] == "integer" and route["priority"]["format"] == "int32"
    assert route["estimatedInputTokens"]["type"] == ["string", "integer"]
    assert route["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert route["availableSlots"]["items"] == {
        "$ref": "#/components/schemas/routing_sidecar.v1.Slot"}
    assert "OBJECTIVE_QUALITY" in route["objective"]["enum"]
    attempt = schemas["routing_sidecar.v1.Attempt"]["properties"]
    assert attempt["startedAt"]["format"] == "date-time"
    assert attempt["duration"]["pattern"].endswith("s$")
