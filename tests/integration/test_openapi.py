"""/openapi.json checked with schemathesis against a running sidecar: generated requests to every
operation (with and without the token) never get a 5xx, and every answer matches the document.

Bounded to a few examples per operation so `make test` stays quick.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from routing_sidecar.grpc_api import jsonwire
from routing_sidecar.http_api.routes import ENDPOINTS
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from tests.conftest import config_dict, free_port, write_config
from tests.e2e.test_process import BIN

TOKEN = "openapi-test-token"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `routing-sidecar serve` for the whole module; yields its admin port's URL."""
    tmp: Path = tmp_path_factory.mktemp("openapi")
    raw = config_dict(tmp)
    (tmp / "token").write_text(TOKEN)
    raw["admin"] = {"token_file": str(tmp / "token")}
    admin = f"127.0.0.1:{free_port()}"
    log = (tmp / "sidecar.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN), "serve", "--config", str(write_config(tmp, raw)),
         "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", admin],
        stdout=log, stderr=log)
    base = f"http://{admin}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp / "sidecar.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the admin port never answered"
            time.sleep(0.05)
        # Some traffic, so the read endpoints have rows to describe.
        for i in range(5):
            d = httpx.post(f"{base}/route", json={
                "taskId": f"seed-{i}", "taskType": "fix_bug",
                "labels": {"project": "alpha", "layer": "api"}}).json()
            httpx.post(f"{base}/outcome", json={"decisionId": d["decisionId"], "success": True,
                                                "attempts": [{"model": d["model"],
                                                              "status": "ATTEMPT_STATUS_SUCCESS",
                                                              "duration": "1s"}]})
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
        assert "Traceback" not in (tmp / "sidecar.log").read_text()


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


# The route table is known before the server runs, so each operation is its own test;
# schema-breaking (negative) requests go to the operations that take any input.
OPERATIONS = [(e.method, e.path) for e in ENDPOINTS] + [("GET", "/openapi.json")]
CASES = [(e.method, e.path, mode) for e in ENDPOINTS
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode is GenerationMode.POSITIVE or e.params or e.body]


def run_operation(api_schema: Any, base_url: str, method: str, path: str,
                  mode: GenerationMode, headers: dict[str, str], examples: int) -> None:
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        case.call_and_validate(base_url=base_url, checks=CHECKS, headers=headers)

    call()


@pytest.mark.parametrize(("method", "path", "mode"), CASES,
                         ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_no_5xx_and_answers_match_the_document(
    api_schema: Any, base_url: str, method: str, path: str, mode: GenerationMode
) -> None:
    run_operation(api_schema, base_url, method, path, mode, {}, 10)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_with_the_token_too(api_schema: Any, base_url: str, method: str, path: str) -> None:
    run_operation(api_schema, base_url, method, path, GenerationMode.POSITIVE,
                  {"Authorization": f"Bearer {TOKEN}"}, 10)


def test_requests_that_succeed_answer_as_documented(api_schema: Any, base_url: str) -> None:
    """Random bodies mostly earn 400s; these reach the 2xx answers and check them too."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    examples = {(e.method, e.path): e.example for e in ENDPOINTS if e.example is not None}

    def call(method: str, path: str, expect: int, **kw: Any) -> Any:
        case = api_schema[path][method].Case(**kw)
        response = case.call_and_validate(base_url=base_url, checks=CHECKS, headers=auth)
        assert response.status_code == expect, response.text
        media = response.headers.get("content-type", [""])[0]
        return response.json() if media.startswith("application/json") else response.text

    d = call("POST", "/route", 200, body=examples[("POST", "/route")])
    outcome = {**examples[("POST", "/outcome")], "decisionId": d["decisionId"]}
    outcome["attempts"] = [{**outcome["attempts"][0], "model": d["model"]}]
    assert call("POST", "/outcome", 200, body=outcome)["duplicate"] is False
    call("GET", "/api/routing/decisions/{id}", 200, path_parameters={"id": d["decisionId"]})
    call("GET", "/api/routing/decisions", 200, query={"limit": 3, "model": d["model"]})
    call("GET", "/api/routing/matrix", 200, query={"by": "layer", "hours": 2})
    call("GET", "/", 200, query={"by": "project"})
    call("POST", "/api/routing/policies", 200, body=examples[("POST", "/api/routing/policies")])
    call("POST", "/api/routing/policies", 201,
         body={"name": "spare", "policy": {"models": ["glm-4.6"]}})
    call("DELETE", "/api/routing/policies/{name}", 200, path_parameters={"name": "spare"})
    call("GET", "/api/routing/policies", 200)
    pause = examples[("POST", "/api/routing/models/{name}/pause")]
    call("POST", "/api/routing/models/{name}/pause", 200, path_parameters={"name": "glm-4.6"},
         body=pause)
    call("POST", "/api/routing/models/{name}/resume", 200,
         path_parameters={"name": "glm-4.6"})
    call("POST", "/api/routing/breakers/{scope}/{name}/reset", 200,
         path_parameters={"scope": "provider", "name": "zhipu"})


def test_the_document_lists_every_route_and_the_contract_messages(base_url: str) -> None:
    doc = httpx.get(f"{base_url}/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    for e in ENDPOINTS:
        assert e.method.lower() in doc["paths"][e.path], (e.method, e.path)
    schemas = doc["components"]["schemas"]
    route = schemas[jsonwire.ROUTE_REQUEST]
    # Generated from the descriptors: every RouteRequest field, under its JSON name.
    assert set(route["properties"]) == {f.json_name for f in pb.RouteRequest.DESCRIPTOR.fields}
    assert route["additionalProperties"] is False
    assert route["properties"]["requires"] == {
        "$ref": "#/components/schemas/routing_sidecar.v1.Requirements"}
    body = doc["paths"]["/route"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": f"#/components/schemas/{jsonwire.ROUTE_REQUEST}"}
    answer = doc["paths"]["/route"]["post"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"] == {"$ref": f"#/components/schemas/{jsonwire.DECISION}"}
    assert doc["paths"]["/api/routing/policies"]["post"]["security"] == [{"bearer": []}]
