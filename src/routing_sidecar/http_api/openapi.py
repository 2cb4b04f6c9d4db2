"""The OpenAPI 3.1 document, built from the route table.

Request and answer bodies that are contract messages take their schemas from the protobuf
descriptors (grpc_api.json_schema); the read API's documents from their pydantic models.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from routing_sidecar import __version__
from routing_sidecar.grpc_api import json_schema
from routing_sidecar.http_api.routes import Answer, Endpoint
from routing_sidecar.http_api.views import ErrorBody

REF = "#/components/schemas/{model}"
DESCRIPTIONS = {
    200: "OK", 201: "Created", 400: "A field is malformed; the message starts with its path",
    401: "No bearer token", 403: "The bearer token is wrong, or changes are off",
    404: "Unknown id or name", 408: "The body was not received in time",
    409: "The state forbids it", 413: "The body is too large",
    415: "The body is not application/json", 503: "Not serving, or the store is busy (retry)",
}


def _models(endpoints: Iterable[Endpoint]) -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {"ErrorBody": ErrorBody}
    for e in endpoints:
        for x in (e.answer, e.body):
            if isinstance(x, type) and issubclass(x, BaseModel):
                found[x.__name__] = x
    return list(found.values())


def _ref(answer: Answer, keys: dict[tuple[type[BaseModel], str], dict[str, Any]],
         mode: str) -> dict[str, Any] | None:
    if answer is None:
        return None
    if isinstance(answer, str):
        return {"$ref": REF.format(model=answer)}
    return keys[(answer, mode)]


def _operation(e: Endpoint, keys: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    where = e.path.strip("/").replace("/", "_").replace("{", "").replace("}", "") or "dashboard"
    op: dict[str, Any] = {"summary": e.summary, "tags": [e.tag],
                          "operationId": f"{e.method.lower()}_{where}"}
    if e.params:
        op["parameters"] = [{"name": p.name, "in": p.where, "required": p.where == "path",
                             "schema": p.schema, "description": p.description}
                            for p in e.params]
    body = _ref(e.body, keys, "validation")
    if body is not None:
        media: dict[str, Any] = {"schema": body}
        if e.example is not None:
            media["example"] = e.example
        op["requestBody"] = {"required": e.body_required, "content": {"application/json": media}}
    answer = _ref(e.answer, keys, "serialization")
    content = {e.media: {"schema": answer or {"type": "string"}}}
    responses: dict[str, Any] = {str(s): {"description": DESCRIPTIONS[s], "content": content}
                                 for s in e.ok}
    error = {"application/json": {"schema": keys[(ErrorBody, "serialization")]}}
    for status in e.errors:
        # /health answers 503 with its own body; every other refusal is an ErrorBody.
        same = e.answer is not None and status == 503 and e.path == "/health"
        responses[str(status)] = {"description": DESCRIPTIONS[status],
                                  "content": content if same else error}
    op["responses"] = responses
    if e.access == "token":
        op["security"] = [{"bearer": []}]
    return op


def document(endpoints: Iterable[Endpoint], proto_messages: Iterable[str]) -> dict[str, Any]:
    """The whole OpenAPI document for these endpoints."""
    endpoints = tuple(endpoints)
    models = _models(endpoints)
    pairs = [(m, mode) for m in models for mode in ("validation", "serialization")]
    keys, defs = models_json_schema(pairs, ref_template=REF)  # type: ignore[arg-type]
    schemas = {**defs.get("$defs", {}), **json_schema.schemas(proto_messages)}
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e, keys)
    paths["/openapi.json"] = {"get": {
        "summary": "This document", "tags": ["probes"], "operationId": "get_openapi",
        "responses": {"200": {"description": "OK", "content": {
            "application/json": {"schema": {"type": "object"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "routing-sidecar admin API", "version": __version__,
                 "description": "The admin port: probes, the HTTP/JSON API (the proto3 JSON "
                                "mapping of the Router messages), the read API and the "
                                "dashboard. POST/DELETE under /api/routing/ need the bearer "
                                "token of admin.token_file."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
