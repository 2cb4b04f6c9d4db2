"""The response cache through the admin HTTP API: the same service, the same behaviour."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx

from routing_sidecar.app import Sidecar
from tests.integration.test_http_api import admin_config, started


def route(key: str, project: str = "alpha") -> dict[str, object]:
    return {"taskId": "h-1", "taskType": "analyze_logs", "estimatedInputTokens": 900,
            "maxOutputTokens": 200, "labels": {"project": project}, "cacheKey": key}


async def test_store_and_hit_over_http_and_the_dashboard_figures(tmp_path: Path) -> None:
    car: Sidecar = await started(admin_config(tmp_path))
    try:
        async with httpx.AsyncClient(base_url=f"http://{car.admin_address}", timeout=10) as http:
            first = (await http.post("/route", json=route("nightly:db"))).json()
            assert first["status"] == "DECISION_STATUS_ROUTED"
            value = b'{"healthy": true}'
            ack = (await http.post("/outcome", json={
                "decisionId": first["decisionId"], "success": True,
                "cacheValue": base64.b64encode(value).decode(),
                "attempts": [{"model": first["model"], "status": "ATTEMPT_STATUS_SUCCESS",
                              "inputTokens": 900, "outputTokens": 120}]})).json()
            assert ack["cacheStored"] is True
            hit = (await http.post("/route", json=route("nightly:db"))).json()
            assert hit["status"] == "DECISION_STATUS_CACHE_HIT"
            assert hit["reasonCode"] == "REASON_CODE_CACHE_HIT"
            assert base64.b64decode(hit["cachedValue"]) == value
            assert hit["cacheSourceDecisionId"] == first["decisionId"]
            other = (await http.post("/route", json=route("nightly:db", "beta"))).json()
            assert other["status"] == "DECISION_STATUS_ROUTED"
            too_big = await http.post("/outcome", json={
                "decisionId": other["decisionId"], "success": True,
                "cacheValue": base64.b64encode(b"x" * (256 * 1024 + 1)).decode()})
            assert too_big.status_code == 400
            assert too_big.json()["error"]["field"] == "cache_value"
            costs = (await http.get("/api/routing/costs")).json()["cache"]
            assert (costs["enabled"], costs["hits"], costs["misses"]) == (True, 1, 2)
            assert costs["hit_rate"] == 1 / 3 and costs["saved_micros"] > 0
            assert "1 entries in sqlite" in costs["note"]
    finally:
        await car.stop()
