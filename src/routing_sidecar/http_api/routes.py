"""The route table: every endpoint once, with what the OpenAPI document says of it.

Adding an endpoint (POST /complete, say) is one `Endpoint` here and its handler; the app and
/openapi.json both read this table, so the document cannot miss a route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from routing_sidecar.grpc_api import jsonwire
from routing_sidecar.http_api import actions, dashboard, handlers
from routing_sidecar.http_api import views as v
from routing_sidecar.http_api.backend import Backend, Settings

Handler = Callable[[web.Request, Backend, Settings], Awaitable[web.StreamResponse]]
# open: anyone who reaches the port; data: the token when the port is not loopback (the data
# plane, like the Router service); token: always the token (changes to the running sidecar).
Access = Literal["open", "data", "token"]
Answer = type[BaseModel] | str | None  # a view model, a proto message's full name, or no JSON

NAME = r"^[A-Za-z0-9_.:@+\-]{1,128}$"
LABEL_KEY = r"^[A-Za-z0-9_.:/@+\-]{1,64}$"


@dataclass(frozen=True, slots=True)
class Param:
    """A query or path parameter."""

    name: str
    where: Literal["query", "path"]
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One method on one path."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    answer: Answer = None
    ok: tuple[int, ...] = (200,)
    media: str = "application/json"
    body: Answer = None
    body_required: bool = True
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    access: Access = "open"
    traced: bool = False  # a SERVER span continuing the caller's traceparent
    example: dict[str, Any] | None = None  # a request body that succeeds, for the document


def _name(where: Literal["query", "path"], name: str, description: str) -> Param:
    return Param(name, where, {"type": "string", "pattern": NAME}, description)


HOURS = Param("hours", "query", {"type": "integer", "minimum": 1,
                                 "maximum": handlers.MAX_HOURS, "default": 24},
              "window length in hours")
BY = Param("by", "query", {"type": "string", "pattern": LABEL_KEY, "default": "task_type"},
           "task_type, or a label key such as layer")
ROUTE_EXAMPLE = {"taskId": "T-42", "taskType": "fix_bug", "priority": 50,
                 "estimatedInputTokens": "2000", "maxOutputTokens": "1000",
                 "labels": {"project": "alpha", "layer": "api"}}
OUTCOME_EXAMPLE = {"decisionId": "3f6c0a9e5b1d4c2a8e7f6a5b4c3d2e1f", "success": True,
                   "quality": 0.9, "attempts": [
                       {"model": "minimax-m2", "status": "ATTEMPT_STATUS_SUCCESS",
                        "duration": "2.5s", "inputTokens": "2000", "outputTokens": "800"}]}
BODY_ERRORS = (400, 408, 413, 415)
AUTH_ERRORS = (401, 403)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/health", handlers.health, "SERVING while the gRPC server serves",
             "probes", v.Health, errors=(503,)),
    Endpoint("GET", "/metrics", handlers.metrics, "Prometheus text", "probes",
             media="text/plain"),
    Endpoint("POST", "/route", handlers.route, "Decide one task (Router/Route)", "routing",
             jsonwire.DECISION, body=jsonwire.ROUTE_REQUEST,
             errors=(*BODY_ERRORS, *AUTH_ERRORS, 503), access="data", traced=True,
             example=ROUTE_EXAMPLE),
    Endpoint("POST", "/outcome", handlers.outcome,
             "Report what happened to a decision (Router/ReportOutcome)", "routing",
             jsonwire.OUTCOME_ACK, body=jsonwire.OUTCOME,
             errors=(*BODY_ERRORS, *AUTH_ERRORS, 404, 503), access="data", traced=True,
             example=OUTCOME_EXAMPLE),
    Endpoint("GET", "/api/routing/policies", handlers.policies,
             "Policies now routing, their source and recent edits", "policies", v.Policies),
    Endpoint("POST", "/api/routing/policies", actions.set_policy,
             "Create or replace one policy (validated as the config file is)", "policies",
             v.PolicyApplied, ok=(200, 201), body=v.PolicyUpdate,
             errors=(*BODY_ERRORS, *AUTH_ERRORS, 503), access="token",
             example={"name": "code", "policy": {"models": ["minimax-m2", "glm-4.6"],
                                                 "objective": "cost_speed", "fallbacks": 1}}),
    Endpoint("DELETE", "/api/routing/policies/{name}", actions.revert_policy,
             "Revert a policy to the config file's", "policies", v.PolicyApplied,
             params=(_name("path", "name", "policy name"),),
             errors=(400, *AUTH_ERRORS, 404, 409, 503), access="token"),
    Endpoint("GET", "/api/routing/costs", handlers.costs,
             "Budgets and spend by scope and period; cache figures", "routing data", v.Costs),
    Endpoint("GET", "/api/routing/performance", handlers.performance,
             "Health rows, detection states, learned quality, breakers, pauses",
             "routing data", v.Performance),
    Endpoint("GET", "/api/routing/matrix", handlers.matrix,
             "Model x task type (or label): decisions, $/decision, fallback rate",
             "routing data", v.Matrix, params=(HOURS, BY), errors=(400, 503)),
    Endpoint("GET", "/api/routing/decisions", handlers.decisions,
             "Recent decisions with reasons and alternatives", "routing data", v.Decisions,
             params=(Param("limit", "query", {"type": "integer", "minimum": 1,
                                              "maximum": handlers.MAX_DECISIONS,
                                              "default": 50}),
                     _name("query", "model", "only decisions that chose this model"),
                     _name("query", "task_type", "only decisions of this task type")),
             errors=(400, 503)),
    Endpoint("GET", "/api/routing/decisions/{id}", handlers.decision,
             "One decision with its attempts", "routing data", v.DecisionItem,
             params=(_name("path", "id", "decision id"),), errors=(400, 404, 503)),
    Endpoint("GET", "/api/routing/activity", handlers.activity,
             "Decisions per minute and spend per hour", "routing data", v.Activity,
             errors=(503,)),
    Endpoint("POST", "/api/routing/models/{name}/pause", actions.pause,
             "Take a model out of routing", "operator", v.PauseState,
             body=v.PauseRequest, body_required=False,
             params=(_name("path", "name", "catalog model"),),
             errors=(*BODY_ERRORS, *AUTH_ERRORS, 404, 503), access="token",
             example={"reason": "provider incident"}),
    Endpoint("POST", "/api/routing/models/{name}/resume", actions.resume,
             "Put a paused model back into routing", "operator", v.PauseState,
             params=(_name("path", "name", "catalog model"),),
             errors=(400, *AUTH_ERRORS, 404, 503), access="token"),
    Endpoint("POST", "/api/routing/breakers/{scope}/{name}/reset", actions.reset_breaker,
             "Close a model's or provider's circuit breaker", "operator", v.BreakerState,
             params=(Param("scope", "path", {"type": "string", "enum": ["model", "provider"]}),
                     _name("path", "name", "catalog model or provider")),
             errors=(400, *AUTH_ERRORS, 404), access="token"),
    Endpoint("GET", "/", dashboard.page, "The routing dashboard", "dashboard",
             media="text/html", params=(HOURS, BY), errors=(400, 503)),
)
