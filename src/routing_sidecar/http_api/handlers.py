"""Handlers of the data plane (/route, /outcome), the probes and the read API.

/route and /outcome parse the proto3 JSON body through jsonwire (the gRPC converters'
validation) and call the same services the Router servicer calls, so a decision made over
HTTP is audited, reserved, counted and traced exactly as one made over gRPC.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from routing_sidecar import logs
from routing_sidecar.errors import NotFound
from routing_sidecar.grpc_api import jsonwire
from routing_sidecar.http_api import documents
from routing_sidecar.http_api.backend import Backend, Settings
from routing_sidecar.http_api.request import json_body, query_int, query_name
from routing_sidecar.http_api.views import Health, dump

MAX_HOURS = 24 * 366
MAX_DECISIONS = 500


def json_response(data: object, status: int = 200) -> web.Response:
    """A JSON answer that no cache keeps (it is live state)."""
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


async def health(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """200 while the gRPC server reports SERVING, else 503."""
    serving = await b.serving()
    status = "SERVING" if serving else "NOT_SERVING"
    return json_response(dump(Health(status=status)), 200 if serving else 503)


async def metrics(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Prometheus text; collected on a thread, so a large scrape never stalls a Route."""
    body = await asyncio.to_thread(b.metrics)
    return web.Response(body=body, headers={"Content-Type": b.metrics_content_type})


async def route(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Decide one task: a RouteRequest in, a Decision out."""
    task = jsonwire.task_from_json(await json_body(request, s.read_timeout_s))
    started = time.perf_counter()
    decision = await b.routing.route(task, b.observer.trace_ids())
    b.observer.decided(task, decision, time.perf_counter() - started)
    return json_response(jsonwire.decision_to_json(decision))


async def outcome(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Record what happened to a decision: an Outcome in, an OutcomeAck out."""
    result = jsonwire.outcome_from_json(await json_body(request, s.read_timeout_s))
    logs.bind_decision(result.decision_id)
    ack = await b.outcomes.report(result)
    b.observer.reported(ack)
    return json_response(jsonwire.ack_to_json(ack))


def matrix_by(request: web.Request) -> str:
    """The matrix's `by` parameter: task_type (the default) or a label key."""
    by = request.query.get("by") or documents.TASK_TYPE
    return by if by == documents.TASK_TYPE else jsonwire.check_label_key("by", by)


async def costs(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Budgets and spend by scope and period; the cache's figures."""
    return json_response(dump(await documents.costs(b)))


async def performance(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Health rows, detection states, learned quality, breakers and pauses."""
    return json_response(dump(documents.performance(b)))


async def matrix(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Model x task type (or label) with decisions, $/decision and fallback rate."""
    hours = query_int(request, "hours", 24, 1, MAX_HOURS)
    return json_response(dump(await documents.matrix(b, hours, matrix_by(request))))


async def decisions(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Recent decisions with their reasons, alternatives and outcomes."""
    limit = query_int(request, "limit", 50, 1, MAX_DECISIONS)
    model = query_name(request, "model")
    task_type = query_name(request, "task_type")
    return json_response(dump(await documents.decisions(b, limit, model, task_type)))


async def decision(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """One decision with its attempts."""
    decision_id = jsonwire.check_name("id", request.match_info["id"])
    view = await b.store.decision_view(decision_id)
    if view is None:
        raise NotFound(f"id: no decision {decision_id!r}")
    return json_response(dump(documents.decision_item(view)))


async def activity(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Decisions per minute (last hour) and spend per hour (last day)."""
    return json_response(dump(await documents.activity(b)))


async def policies(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Every policy now routing, where it comes from, the rules, recent edits."""
    return json_response(dump(documents.policies(b)))
