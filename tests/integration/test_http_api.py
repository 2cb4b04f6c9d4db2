"""The admin HTTP API against a real sidecar: a real aiohttp server on 127.0.0.1:0, real SQLite
under tmp_path, a real HTTP client (httpx), and gRPC beside it to check both agree."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2

from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar.errors import ConfigError
from routing_sidecar.http_api.backend import Settings
from routing_sidecar.http_api.server import AdminServer
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict
from tests.integration.otlp_receiver import attrs, otlp_receiver
from tests.integration.test_telemetry import ROUTE_PARENT, TRACE_ID, by_name, traced_config

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def admin_config(tmp_path: Path, **admin: Any) -> dict[str, Any]:
    raw = config_dict(tmp_path)
    token = tmp_path / "admin.token"
    token.write_text(TOKEN + "\n")
    raw["admin"] = {"token_file": str(token), **admin}
    return raw


async def started(raw: dict[str, Any]) -> Sidecar:
    car = Sidecar(parse_config(yaml.safe_dump(raw), "test"))
    await car.start()
    return car


@pytest.fixture
async def car(tmp_path: Path) -> AsyncIterator[Sidecar]:
    sidecar = await started(admin_config(tmp_path))
    try:
        yield sidecar
    finally:
        await sidecar.stop()


@pytest.fixture
async def http(car: Sidecar) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{car.admin_address}", timeout=10) as c:
        yield c


@pytest.fixture
async def stub(car: Sidecar) -> AsyncIterator[pb_grpc.RouterStub]:
    async with grpc.aio.insecure_channel(car.address) as ch:
        yield pb_grpc.RouterStub(ch)


def route_body(task_id: str, **extra: Any) -> dict[str, Any]:
    return {"taskId": task_id, "taskType": "fix_bug", "estimatedInputTokens": 2000,
            "maxOutputTokens": 1000, "labels": {"project": "alpha", "layer": "api"}, **extra}


async def decisions_in_store(car: Sidecar) -> int:
    assert car.store is not None
    return len(await car.store.list_decisions(500))


async def ledger_rows(car: Sidecar) -> int:
    assert car.store is not None
    return len(await car.store.load_ledger_entries())


# -- probes ---------------------------------------------------------------------------------


async def test_health_follows_the_grpc_health_service(car: Sidecar,
                                                      http: httpx.AsyncClient) -> None:
    r = await http.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "SERVING"}
    assert car.server is not None
    await car.server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    r = await http.get("/health")
    assert r.status_code == 503 and r.json() == {"status": "NOT_SERVING"}


async def test_metrics_count_decisions_made_over_http(http: httpx.AsyncClient) -> None:
    for i in range(3):
        assert (await http.post("/route", json=route_body(f"m-{i}"))).status_code == 200
    r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    counted = [line for line in r.text.splitlines()
               if line.startswith("routing_decisions_total{") and 'status="routed"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 3


async def test_openapi_document_is_built_on_first_request_and_served_the_same_after(
        http: httpx.AsyncClient) -> None:
    # Several first requests at once share one build (made on a thread, not at start).
    first = await asyncio.gather(*(http.get("/openapi.json") for _ in range(3)))
    assert all(r.status_code == 200 for r in first)
    assert first[0].headers["content-type"].startswith("application/json")
    doc = first[0].json()
    assert doc["openapi"].startswith("3.1") and "/route" in doc["paths"]
    assert all(r.content == first[0].content for r in first)
    assert (await http.get("/openapi.json")).content == first[0].content


# -- the data plane: /route and /outcome ----------------------------------------------------


async def test_route_over_http_decides_audits_and_reserves_like_grpc(
    car: Sidecar, http: httpx.AsyncClient, stub: pb_grpc.RouterStub
) -> None:
    before = await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["project:alpha"]))
    r = await http.post("/route", json=route_body("h-1"))
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["status"] == "DECISION_STATUS_ROUTED" and d["policy"] == "code"
    assert d["taskId"] == "h-1" and d["alternatives"] and d["fallbacks"]
    assert d["estimatedCostMicros"].isdigit()  # proto3 JSON: 64-bit integers as strings
    # The same request over gRPC decides the same way.
    g = await stub.Route(pb.RouteRequest(
        task_id="g-1", task_type="fix_bug", estimated_input_tokens=2000, max_output_tokens=1000,
        labels={"project": "alpha", "layer": "api"}))
    assert (g.model, g.provider, g.policy) == (d["model"], d["provider"], d["policy"])
    assert [a.model for a in g.alternatives] == [a["model"] for a in d["alternatives"]]
    # Audited before it was answered, and reserved on the budget like the gRPC one.
    assert car.store is not None
    record = await car.store.get_decision(d["decisionId"])
    assert record is not None and record.chosen_model == d["model"]
    after = await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["project:alpha"]))
    reserved = after.budgets[0].reserved_micros - before.budgets[0].reserved_micros
    assert reserved == int(d["estimatedCostMicros"]) + g.estimated_cost_micros


async def test_snake_case_names_are_accepted_too(http: httpx.AsyncClient) -> None:
    r = await http.post("/route", json={"task_id": "s-1", "task_type": "fix_bug",
                                        "dry_run": True})
    assert r.status_code == 200 and r.json()["dryRun"] is True


BAD_ROUTES = [
    ({"taskId": "b", "taskType": "fix_bug", "priority": 300}, "priority", "must be 0..100"),
    ({"taskId": "b", "taskType": "fix_bug", "priority": "high"}, "priority",
     "expected an integer"),
    ({"taskId": "b", "taskType": "fix_bug", "bogus": 1}, "bogus", "not a field of RouteRequest"),
    ({"taskId": "b", "taskType": "fix_bug", "requires": {"minTier": 9}}, "requires.min_tier",
     "must be 0..3"),
    ({"taskId": "b", "taskType": "fix_bug", "requires": {"colour": "red"}}, "requires.colour",
     "not a field of Requirements"),
    ({"taskId": "b", "taskType": "fix_bug",
      "availableSlots": [{"slotId": "w1", "model": "gpt-9"}]},
     "available_slots[0].model", "unknown model 'gpt-9'"),
    ({"taskId": "b", "taskType": "fix_bug",
      "availableSlots": [{"slotId": "w1", "model": "glm-4.6", "utilisation": "busy"}]},
     "available_slots[0].utilisation", "expected a number"),
    ({"taskId": "b", "taskType": "fix_bug", "labels": {"project": 7}}, "labels[project]",
     "expected a string"),
    ({"taskId": "b", "taskType": "fix_bug", "objective": "CHEAPEST"}, "objective",
     "unknown value"),
    ({"taskId": "b", "task_id": "c", "taskType": "fix_bug"}, "task_id", "given twice"),
    ({"taskType": "fix_bug"}, "task_id", "is required"),
    ([1, 2], "body", "expected a JSON object"),
]


@pytest.mark.parametrize(("body", "field", "problem"), BAD_ROUTES)
async def test_bad_route_fields_get_400_naming_the_field_and_write_nothing(
    car: Sidecar, http: httpx.AsyncClient, body: Any, field: str, problem: str
) -> None:
    rows = await ledger_rows(car)
    r = await http.post("/route", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == field
    assert error["message"].startswith(f"{field}: ") and problem in error["message"]
    assert "Error" not in error["message"]  # no class names leak
    assert await decisions_in_store(car) == 0 and await ledger_rows(car) == rows


async def test_undecodable_and_misdeclared_bodies_are_refused(
    car: Sidecar, http: httpx.AsyncClient
) -> None:
    json_header = {"Content-Type": "application/json"}
    r = await http.post("/route", content=b'{"taskId": ', headers=json_header)
    assert r.status_code == 400 and r.json()["error"]["message"] == "body: not valid JSON"
    r = await http.post("/route", content=b"[" * 100_000, headers=json_header)
    assert r.status_code == 400
    # A page on another origin can POST text/plain without asking: that never routes.
    r = await http.post("/route", content=b'{"taskId":"x","taskType":"fix_bug"}',
                        headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["field"] == "body"
    r = await http.post("/route", content=b"{" + b" " * (2 << 20) + b"}", headers=json_header)
    assert r.status_code == 413 and r.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert await decisions_in_store(car) == 0
    assert (await http.get("/health")).status_code == 200


async def test_outcome_over_http_settles_once_and_names_bad_fields(
    car: Sidecar, http: httpx.AsyncClient, stub: pb_grpc.RouterStub
) -> None:
    d = (await http.post("/route", json=route_body("o-1"))).json()
    fb = d["fallbacks"][0]
    outcome = {"decisionId": d["decisionId"], "success": True, "quality": 0.9, "attempts": [
        {"model": d["model"], "status": "ATTEMPT_STATUS_TRANSIENT_ERROR", "duration": "0.5s",
         "inputTokens": "2000", "costMicros": "1000"},
        {"model": fb["model"], "status": "ATTEMPT_STATUS_SUCCESS", "duration": "2s",
         "startedAt": datetime.now(UTC).isoformat(), "inputTokens": 2000,
         "outputTokens": 400,
         "costMicros": 2500},
    ]}
    r = await http.post("/outcome", json=outcome)
    assert r.status_code == 200, r.text
    ack = r.json()
    assert ack["actualCostMicros"] == "3500" and ack["duplicate"] is False
    budgets = await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["project:alpha"]))
    assert budgets.budgets[0].spent_micros == 3500 and budgets.budgets[0].reserved_micros == 0
    again = (await http.post("/outcome", json=outcome)).json()
    assert again["duplicate"] is True and again["actualCostMicros"] == "3500"
    missing = await http.post("/outcome", json={"decisionId": "nope"})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"].startswith("decision_id: ")
    for body, field in [
        ({"decisionId": d["decisionId"], "attempts": [{"duration": "soon"}]},
         "attempts[0].duration"),
        ({"decisionId": d["decisionId"], "attempts": [{"startedAt": "yesterday"}]},
         "attempts[0].started_at"),
        ({"decisionId": d["decisionId"], "quality": 3}, "quality"),
        ({"decisionId": d["decisionId"], "attempts": [{"model": "gpt-9",
                                                       "status": "ATTEMPT_STATUS_SUCCESS"}]},
         "attempts[0].model"),
    ]:
        r = await http.post("/outcome", json=body)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text


# -- the read API ---------------------------------------------------------------------------


async def test_matrix_shows_decisions_cost_and_fallback_rate_as_grpc_stats_do(
    http: httpx.AsyncClient, stub: pb_grpc.RouterStub
) -> None:
    decisions = [(await http.post("/route", json=route_body(f"x-{i}"))).json()
                 for i in range(4)]
    check = (await http.post("/route", json={
        "taskId": "c-1", "taskType": "check_links", "priority": 10,
        "labels": {"layer": "docs"}})).json()
    d = decisions[0]
    await http.post("/outcome", json={"decisionId": d["decisionId"], "success": True,
                                      "attempts": [
        {"model": d["model"], "status": "ATTEMPT_STATUS_TIMEOUT", "costMicros": 0},
        {"model": d["fallbacks"][0]["model"], "status": "ATTEMPT_STATUS_SUCCESS",
         "costMicros": 4000}]})
    m = (await http.get("/api/routing/matrix")).json()
    assert m["by"] == "task_type" and m["hours"] == 24
    assert set(m["values"]) == {"fix_bug", "check_links"}
    assert {d["model"], check["model"]} <= set(m["models"])
    cell = next(c for c in m["cells"] if (c["model"], c["value"]) == (d["model"], "fix_bug"))
    assert cell["decisions"] == 4 and cell["fallback_decisions"] == 1
    assert cell["fallback_rate"] == pytest.approx(0.25)
    assert cell["estimated_cost_micros_per_decision"] == int(d["estimatedCostMicros"])
    assert cell["actual_cost_micros_per_decision"] == 1000  # 4000 over four decisions
    stats = await stub.GetRoutingStats(pb.StatsQuery(hours=24))
    grpc_cells = {(c.model, c.value): (c.decisions, c.estimated_cost_micros_per_decision,
                                       c.actual_cost_micros_per_decision)
                  for c in stats.cells if c.dimension == "task_type"}
    assert grpc_cells == {(c["model"], c["value"]): (
        c["decisions"], c["estimated_cost_micros_per_decision"],
        c["actual_cost_micros_per_decision"]) for c in m["cells"]}
    providers = {p["provider"]: p for p in m["providers"]}
    assert providers[d["provider"]]["decisions"] == 4
    assert providers[d["fallbacks"][0]["provider"]]["spend_micros"] == 4000
    assert {"layer", "project"} <= set(m["label_keys"])
    by_layer = (await http.get("/api/routing/matrix", params={"by": "layer", "hours": 1})).json()
    assert by_layer["by"] == "layer" and set(by_layer["values"]) == {"api", "docs"}
    bad = await http.get("/api/routing/matrix", params={"hours": 0})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "hours"
    bad = await http.get("/api/routing/matrix", params={"by": "lay er"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "by"


@pytest.mark.parametrize("extra", [
    {}, {"taskType": "check_links", "priority": 10}, {"priority": 99},
    {"requires": {"capabilities": ["long_context"]}}, {"valueMicros": "50000"},
    {"requires": {"minQuality": 0.8}}, {"excludeModels": ["minimax-m2"]},
])
async def test_a_decision_reads_back_with_the_words_it_was_answered_with(
    http: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    # The store keeps common sentences as codes; what it shows must be what Route answered.
    made = (await http.post("/route", json=route_body("words", **extra))).json()
    one = (await http.get(f"/api/routing/decisions/{made['decisionId']}")).json()
    assert one["reason"] == made["reason"]
    assert [(a["model"], a["rejection"], a["reason"]) for a in one["alternatives"]] == [
        (a["model"], a["rejection"], a["reason"]) for a in made["alternatives"]]
    assert [(f["model"], f["provider"]) for f in one["fallbacks"]] == [
        (f["model"], f["provider"]) for f in made.get("fallbacks", [])]
    listed = (await http.get("/api/routing/decisions", params={"limit": 1})).json()
    assert listed["decisions"][0]["reason"] == made["reason"]


async def test_decisions_list_and_one_decision_with_its_attempts(
    http: httpx.AsyncClient
) -> None:
    made = [(await http.post("/route", json=route_body(f"l-{i}"))).json() for i in range(3)]
    other = (await http.post("/route", json={"taskId": "l-x", "taskType": "check_links",
                                             "priority": 10})).json()
    listed = (await http.get("/api/routing/decisions", params={"limit": 2})).json()["decisions"]
    assert [x["decision_id"] for x in listed] == [other["decisionId"], made[2]["decisionId"]]
    by_type = (await http.get("/api/routing/decisions",
                              params={"task_type": "fix_bug"})).json()["decisions"]
    assert {x["task_id"] for x in by_type} == {"l-0", "l-1", "l-2"}
    by_model = (await http.get("/api/routing/decisions",
                               params={"model": other["model"]})).json()["decisions"]
    assert all(x["model"] == other["model"] for x in by_model) and by_model
    first = listed[1]
    assert first["reason"] and first["labels"] == {"layer": "api", "project": "alpha"}
    chosen = [a for a in first["alternatives"] if a["chosen"]]
    assert [a["model"] for a in chosen] == [made[2]["model"]]
    assert all(a["reason"] for a in first["alternatives"])
    d = made[0]
    await http.post("/outcome", json={"decisionId": d["decisionId"], "success": True,
                                      "attempts": [{"model": d["model"],
                                                    "status": "ATTEMPT_STATUS_SUCCESS",
                                                    "duration": "1.25s", "outputTokens": 10}]})
    one = (await http.get(f"/api/routing/decisions/{d['decisionId']}")).json()
    assert one["outcome"]["success"] is True
    assert [(a["index"], a["model"], a["duration_s"]) for a in one["attempts"]] == [
        (0, d["model"], 1.25)]
    assert (await http.get("/api/routing/decisions/" + "f" * 32)).status_code == 404
    bad = await http.get("/api/routing/decisions/bad%20id")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "id"
    bad = await http.get("/api/routing/decisions", params={"limit": 100000})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "limit"


async def test_costs_performance_and_activity(http: httpx.AsyncClient) -> None:
    d = (await http.post("/route", json=route_body("c-1"))).json()
    costs = (await http.get("/api/routing/costs")).json()
    alpha = next(b for b in costs["budgets"] if b["scope"] == "project:alpha")
    assert alpha["reserved_micros"] == int(d["estimatedCostMicros"]) and alpha["state"] == "OK"
    assert alpha["utilisation"] == pytest.approx(alpha["reserved_micros"] / alpha["limit_micros"])
    assert alpha["period_end"] is not None
    assert costs["cache"] == {"enabled": True, "hits": 0, "misses": 0, "hit_rate": 0.0,
                              "saved_micros": 0, "note": costs["cache"]["note"]}
    perf = (await http.get("/api/routing/performance")).json()
    models = {m["name"]: m for m in perf["models"]}
    assert models[d["model"]]["breaker"] == "closed" and not models[d["model"]]["paused"]
    assert {p["name"] for p in perf["providers"]} >= {d["provider"]}
    assert perf["detection"][f"provider:{d['provider']}"] in ("healthy", "idle")
    activity = (await http.get("/api/routing/activity")).json()
    assert len(activity["decisions_per_minute"]) == 60 and len(activity["spend_per_hour"]) == 24
    assert sum(p["decisions"] for p in activity["decisions_per_minute"]) == 1


# -- tokens and the host check --------------------------------------------------------------


MUTATIONS = [
    ("POST", "/api/routing/policies", {"name": "code", "policy": {"models": ["glm-4.6"]}}),
    ("DELETE", "/api/routing/policies/code", None),
    ("POST", "/api/routing/models/glm-4.6/pause", None),
    ("POST", "/api/routing/models/glm-4.6/resume", None),
    ("POST", "/api/routing/breakers/model/glm-4.6/reset", None),
]


@pytest.mark.parametrize(("method", "path", "body"), MUTATIONS)
async def test_changes_need_the_bearer_token(car: Sidecar, http: httpx.AsyncClient,
                                             method: str, path: str, body: Any) -> None:
    r = await http.request(method, path, json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHENTICATED"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await http.request(method, path, json=body, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    r = await http.request(method, path, json=body,
                           headers={"Authorization": f"Bearer {TOKEN}x"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "PERMISSION_DENIED"
    assert TOKEN not in r.text
    r = await http.request(method, path, json=body, headers=AUTH)
    assert r.status_code in (200, 201, 404), r.text  # 404: reverting a policy never edited
    assert car.operator.pauses.paused.keys() <= {"glm-4.6"}


async def test_without_a_token_file_changes_are_off_and_reads_stay_open(
    tmp_path: Path,
) -> None:
    car = await started(config_dict(tmp_path))
    try:
        async with httpx.AsyncClient(base_url=f"http://{car.admin_address}") as http:
            r = await http.post("/api/routing/models/glm-4.6/pause", headers=AUTH)
            assert r.status_code == 403 and "admin.token_file" in r.json()["error"]["message"]
            assert (await http.get("/api/routing/policies")).status_code == 200
            assert (await http.post("/route", json=route_body("open-1"))).status_code == 200
    finally:
        await car.stop()


async def test_a_foreign_host_name_is_refused_on_a_loopback_port(
    http: httpx.AsyncClient,
) -> None:
    r = await http.get("/api/routing/costs", headers={"Host": "rebound.example:80"})
    assert r.status_code == 421
    for host in ("localhost", "127.0.0.1:9464", "[::1]:9464"):
        assert (await http.get("/health", headers={"Host": host})).status_code == 200


async def test_a_remote_admin_port_needs_a_token_file_and_the_data_plane_needs_the_token(
    car: Sidecar, tmp_path: Path
) -> None:
    raw = config_dict(tmp_path)
    raw["admin"] = {"listen": "0.0.0.0:9464"}
    raw["telemetry"].pop("admin_listen")
    with pytest.raises(ConfigError, match=r"admin\.listen: 0\.0\.0\.0:9464 is not a loopback"):
        parse_config(yaml.safe_dump(raw), "test")
    raw = config_dict(tmp_path)
    raw["telemetry"]["admin_listen"] = "10.1.2.3:9464"
    with pytest.raises(ConfigError, match=r"telemetry\.admin_listen: 10\.1\.2\.3:9464 is not"):
        parse_config(yaml.safe_dump(raw), "test")
    # serve --admin-listen is checked the same way, before anything is opened.
    refused = Sidecar(parse_config(yaml.safe_dump(config_dict(tmp_path)), "test"),
                      admin_listen="0.0.0.0:0")
    with pytest.raises(ConfigError, match="not a loopback address"):
        await refused.start()
    assert refused.store is None and refused.server is None
    # The same API served as on a remote address: /route needs the token, reads do not.
    assert car.admin is not None
    remote = AdminServer(car.admin.backend, Settings("127.0.0.1:0", token=TOKEN, remote=True))
    await remote.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://{remote.address}") as http:
            assert (await http.post("/route", json=route_body("r-1"))).status_code == 401
            ok = await http.post("/route", json=route_body("r-1"), headers=AUTH)
            assert ok.status_code == 200
            assert (await http.get("/api/routing/matrix")).status_code == 200
    finally:
        await remote.stop()


# -- slow and idle clients ------------------------------------------------------------------


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_idle_connections_and_slow_clients_are_cut_off(tmp_path: Path) -> None:
    car = await started(admin_config(tmp_path, idle_timeout_s=0.3, read_timeout_s=0.3))
    try:
        assert car.admin_address
        host, port = car.admin_address.rsplit(":", 1)

        def slow_head() -> bytes:
            with socket.create_connection((host, int(port)), timeout=20) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never ends the head
                return _recv_all(s)

        def slow_body() -> bytes:
            with socket.create_connection((host, int(port)), timeout=20) as s:
                s.sendall(b"POST /route HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
                return _recv_all(s)

        # Closed by the server (recv returns), not by our 20 s socket timeout.
        assert await asyncio.to_thread(slow_head) == b""
        answer = await asyncio.to_thread(slow_body)
        assert answer.startswith(b"HTTP/1.1 408") and b"DEADLINE_EXCEEDED" in answer
        assert await decisions_in_store(car) == 0
    finally:
        await car.stop()


# -- traces ---------------------------------------------------------------------------------


async def test_http_routes_and_outcomes_continue_the_callers_trace(tmp_path: Path) -> None:
    async with otlp_receiver() as (endpoint, got):
        car = Sidecar(traced_config(tmp_path, endpoint))
        await car.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://{car.admin_address}") as http:
                header = {"traceparent": f"00-{TRACE_ID}-{ROUTE_PARENT}-01"}
                d = (await http.post("/route", json=route_body("tr-1"), headers=header)).json()
                await http.post("/outcome", headers=header, json={
                    "decisionId": d["decisionId"], "success": True, "attempts": [
                        {"model": d["model"], "status": "ATTEMPT_STATUS_SUCCESS",
                         "duration": "1s"}]})
                bad = await http.post("/route", json={"priority": 300}, headers=header)
                assert bad.status_code == 400
            assert car.store is not None
            record = await car.store.get_decision(d["decisionId"])
        finally:
            await car.stop()
    spans = got.spans()
    first, refused = by_name(spans, "POST /route")
    assert first.trace_id.hex() == TRACE_ID and first.parent_span_id.hex() == ROUTE_PARENT
    a = attrs(first.attributes)
    assert a["http.response.status_code"] == 200 and a["routing.decision.id"] == d["decisionId"]
    assert a["gen_ai.request.model"] == d["model"]
    assert attrs(refused.attributes)["http.response.status_code"] == 400
    assert refused.status.code != 2  # the caller's fault, not an error of the server
    assert record is not None and record.span_id == first.span_id.hex()
    (report,) = by_name(spans, "POST /outcome")
    (call,) = [s for s in spans if s.name.startswith("chat ")]
    assert call.parent_span_id == first.span_id  # the attempt joins the decision's span
    assert report.trace_id.hex() == TRACE_ID
