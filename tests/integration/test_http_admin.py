"""Changing a running sidecar over the admin API: policy edits, model pauses, breaker resets,
each checked on the next Route and across a restart on the same store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from routing_sidecar.app import Sidecar
from routing_sidecar.config import load_config
from tests.conftest import write_config
from tests.integration.test_http_api import AUTH, admin_config, route_body, started

Open = Callable[[], Awaitable[tuple[Sidecar, httpx.AsyncClient]]]


@pytest.fixture
async def open_sidecar(tmp_path: Path) -> AsyncIterator[Open]:
    """Starts sidecars on one config and one store; each is stopped at the end (or before)."""
    raw = admin_config(tmp_path)
    opened: list[tuple[Sidecar, httpx.AsyncClient]] = []

    async def start() -> tuple[Sidecar, httpx.AsyncClient]:
        for car, http in opened:  # one at a time on the store, as after a restart
            await http.aclose()
            await car.stop()
        car = await started(raw)
        http = httpx.AsyncClient(base_url=f"http://{car.admin_address}", timeout=10)
        opened.append((car, http))
        return car, http

    yield start
    for car, http in opened:
        await http.aclose()
        await car.stop()


async def chosen(http: httpx.AsyncClient, task_id: str, **extra: Any) -> dict[str, Any]:
    r = await http.post("/route", json=route_body(task_id, **extra))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def policy_row(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in doc["policies"] if p["name"] == name)


async def test_a_policy_edit_changes_the_next_route_and_survives_a_restart(
    open_sidecar: Open,
) -> None:
    car, http = await open_sidecar()
    before = await chosen(http, "p-0")
    assert before["policy"] == "code" and before["model"] != "claude-haiku-4-5"
    file_hash = car.routing.state.config_hash
    r = await http.post("/api/routing/policies", headers=AUTH, json={
        "name": "code", "policy": {"models": ["claude-haiku-4-5"], "objective": "quality",
                                   "fallbacks": 0}})
    assert r.status_code == 200, r.text
    applied = r.json()
    assert applied["version"] == 1 and applied["action"] == "set"
    assert applied["policy"]["models"] == ["claude-haiku-4-5"]
    after = await chosen(http, "p-1")
    assert after["model"] == "claude-haiku-4-5" and after["objective"] == "OBJECTIVE_QUALITY"
    assert [a["model"] for a in after["alternatives"]] == ["claude-haiku-4-5"]
    assert car.routing.state.config_hash == applied["config_hash"] != file_hash
    assert car.store is not None
    record = await car.store.get_decision(after["decisionId"])
    assert record is not None and record.config_hash == applied["config_hash"]
    shown = (await http.get("/api/routing/policies")).json()
    code = policy_row(shown, "code")
    assert (code["source"], code["version"], code["in_file"]) == ("api", 1, True)
    assert policy_row(shown, "normal")["source"] == "file"
    assert shown["changes"][0]["policy"] == "code"
    assert shown["config_hash"] == applied["config_hash"]

    car, http = await open_sidecar()  # restart on the same store and file
    assert (await chosen(http, "p-2"))["model"] == "claude-haiku-4-5"
    assert policy_row((await http.get("/api/routing/policies")).json(), "code")["source"] == "api"

    r = await http.delete("/api/routing/policies/code", headers=AUTH)
    assert r.status_code == 200 and r.json()["action"] == "revert"
    assert r.json()["version"] == 2 and r.json()["config_hash"] == file_hash
    assert (await chosen(http, "p-3"))["model"] == before["model"]
    car, http = await open_sidecar()
    assert (await chosen(http, "p-4"))["model"] == before["model"]
    assert policy_row((await http.get("/api/routing/policies")).json(), "code")["source"] == "file"
    assert (await http.delete("/api/routing/policies/code", headers=AUTH)).status_code == 404


async def test_a_new_policy_can_be_created_used_and_removed(open_sidecar: Open) -> None:
    _, http = await open_sidecar()
    r = await http.post("/api/routing/policies", headers=AUTH, json={
        "name": "local-only", "policy": {"models": ["llama-3.1-8b-local"]}})
    assert r.status_code == 201, r.text
    d = await chosen(http, "n-1", policy="local-only")
    assert d["model"] == "llama-3.1-8b-local" and d["policy"] == "local-only"
    shown = policy_row((await http.get("/api/routing/policies")).json(), "local-only")
    assert (shown["source"], shown["in_file"]) == ("api", False)
    r = await http.delete("/api/routing/policies/local-only", headers=AUTH)
    assert r.status_code == 200 and r.json()["policy"] is None
    names = {p["name"] for p in (await http.get("/api/routing/policies")).json()["policies"]}
    assert "local-only" not in names


BAD_POLICIES = [
    ({"name": "code", "policy": {"models": ["gpt-9"]}}, "policies.code.models[0]",
     "unknown model 'gpt-9'"),
    ({"name": "code", "policy": {"models": ["glm-4.6", "glm-4.6"]}}, "policies.code.models[1]",
     "duplicate model"),
    ({"name": "code", "policy": {"models": []}}, "policies.code.models", "at least 1"),
    ({"name": "code", "policy": {"models": ["glm-4.6"], "objective": "fastest"}},
     "policies.code.objective", "Input should be"),
    ({"name": "code", "policy": {"models": ["glm-4.6"], "colour": "red"}},
     "policies.code.colour", "Extra inputs are not permitted"),
    ({"name": "code", "policy": {"models": ["glm-4.6"], "fallbacks": 99}},
     "policies.code.fallbacks", "less than or equal to 10"),
    ({"name": "co de", "policy": {"models": ["glm-4.6"]}}, "name", "may only contain"),
    ({"policy": {"models": ["glm-4.6"]}}, "name", "is required"),
    ({"name": "code"}, "policy", "is required"),
    ({"name": "code", "policy": {"models": ["glm-4.6"]}, "extra": 1}, "extra", "not a field"),
]


@pytest.mark.parametrize(("body", "field", "problem"), BAD_POLICIES)
async def test_a_bad_policy_is_refused_as_a_bad_file_would_be_and_changes_nothing(
    open_sidecar: Open, body: dict[str, Any], field: str, problem: str
) -> None:
    car, http = await open_sidecar()
    digest = car.routing.state.config_hash
    r = await http.post("/api/routing/policies", headers=AUTH, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["field"] == field and error["message"].startswith(f"{field}: ")
    assert problem in error["message"]
    assert car.routing.state.config_hash == digest
    assert car.store is not None and await car.store.policy_changes() == []


async def test_a_paused_model_is_skipped_with_its_reason_until_resumed(
    open_sidecar: Open,
) -> None:
    car, http = await open_sidecar()
    usual = (await chosen(http, "z-0"))["model"]
    r = await http.post(f"/api/routing/models/{usual}/pause", headers=AUTH,
                        json={"reason": "vendor incident 42"})
    assert r.status_code == 200 and r.json()["paused"] is True
    d = await chosen(http, "z-1")
    assert d["model"] != usual
    paused = next(a for a in d["alternatives"] if a["model"] == usual)
    assert paused["rejection"] == "excluded"
    assert paused["reason"].startswith("paused: by an operator since ")
    assert paused["reason"].endswith(": vendor incident 42")
    perf = (await http.get("/api/routing/performance")).json()
    state = next(m for m in perf["models"] if m["name"] == usual)
    assert state["paused"] and state["pause_reason"] == "vendor incident 42"

    car, http = await open_sidecar()  # survives a restart
    assert (await chosen(http, "z-2"))["model"] != usual
    r = await http.post(f"/api/routing/models/{usual}/resume", headers=AUTH)
    assert r.status_code == 200 and r.json()["paused"] is False
    assert (await chosen(http, "z-3"))["model"] == usual
    car, http = await open_sidecar()
    assert (await chosen(http, "z-4"))["model"] == usual
    r = await http.post("/api/routing/models/gpt-9/pause", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["field"] == "name"
    r = await http.post(f"/api/routing/models/{usual}/pause", headers=AUTH,
                        json={"reason": "x" * 500})
    assert r.status_code == 400 and r.json()["error"]["field"] == "reason"
    assert not car.operator.pauses.paused


async def test_pausing_every_model_of_a_policy_rejects_and_lists_them_all(
    open_sidecar: Open,
) -> None:
    car, http = await open_sidecar()
    models = car.cfg.policies["code"].models
    for m in models:
        assert (await http.post(f"/api/routing/models/{m}/pause", headers=AUTH)).status_code == 200
    d = await chosen(http, "all-1")
    assert d["status"] == "DECISION_STATUS_REJECTED"
    assert d["reasonCode"] == "REASON_CODE_NO_CAPABLE_MODEL"
    assert {a["rejection"] for a in d["alternatives"]} == {"excluded"}
    assert all(a["reason"].startswith("paused: ") for a in d["alternatives"])


async def test_a_breaker_reset_closes_it_and_the_model_is_a_candidate_again(
    open_sidecar: Open,
) -> None:
    car, http = await open_sidecar()
    usual = await chosen(http, "b-0")
    breaker = car.cfg.health.breaker.consecutive_failures
    for i in range(breaker):  # that many failures in a row open the model's breaker
        d = await chosen(http, f"b-f{i}")
        r = await http.post("/outcome", json={"decisionId": d["decisionId"], "attempts": [
            {"model": usual["model"], "status": "ATTEMPT_STATUS_TRANSIENT_ERROR"}]})
        assert r.status_code == 200
    perf = (await http.get("/api/routing/performance")).json()
    state = next(m for m in perf["models"] if m["name"] == usual["model"])
    assert state["breaker"] == "open" and state["open_until"]
    def fate(d: dict[str, Any]) -> str:
        return next(a["rejection"] for a in d["alternatives"] if a["model"] == usual["model"])

    assert fate(await chosen(http, "b-1")) == "circuit_open"
    r = await http.post(f"/api/routing/breakers/model/{usual['model']}/reset", headers=AUTH)
    assert r.status_code == 200 and r.json() == {
        "scope": "model", "name": usual["model"], "breaker": "closed", "reset": True}
    # A candidate again; its failures still weigh on its score until they fade.
    assert fate(await chosen(http, "b-2")) in ("chosen", "fallback", "outscored")
    r = await http.post("/api/routing/breakers/lane/x/reset", headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["field"] == "scope"
    r = await http.post("/api/routing/breakers/provider/nobody/reset", headers=AUTH)
    assert r.status_code == 404


async def test_a_reload_of_the_file_keeps_the_policy_edits_and_the_pauses(tmp_path: Path) -> None:
    raw = admin_config(tmp_path)
    path = write_config(tmp_path, raw)
    car = Sidecar(load_config(path), config_path=str(path))
    await car.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://{car.admin_address}") as http:
            r = await http.post("/api/routing/policies", headers=AUTH, json={
                "name": "code", "policy": {"models": ["claude-haiku-4-5", "glm-4.6"]}})
            assert r.status_code == 200, r.text
            r = await http.post("/api/routing/models/glm-4.6/pause", headers=AUTH)
            assert r.status_code == 200, r.text
            raw["budgets"].append({"scope": "project:beta", "period": "day", "limit_usd": 5})
            write_config(tmp_path, raw)
            assert await car.reload() is True
            assert any(b.scope == "project:beta" for b in car.cfg.budgets)
            d = await chosen(http, "rl-1")
            assert d["model"] == "claude-haiku-4-5"
            glm = next(a for a in d["alternatives"] if a["model"] == "glm-4.6")
            assert glm["rejection"] == "excluded" and glm["reason"].startswith("paused: ")
    finally:
        await car.stop()
