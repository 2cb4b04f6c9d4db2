"""Handlers that change the running sidecar; the route table makes each one need the token."""

from __future__ import annotations

from aiohttp import web

from routing_sidecar.errors import InvalidArgument
from routing_sidecar.grpc_api import jsonwire
from routing_sidecar.http_api import views as v
from routing_sidecar.http_api.backend import Backend, Settings
from routing_sidecar.http_api.handlers import json_response
from routing_sidecar.http_api.request import json_body

MAX_POLICY_NAME = 64  # as RouteRequest.policy
MAX_REASON = 200


def _policy_name(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument("name", "is required (a string)")
    return jsonwire.check_name("name", value, MAX_POLICY_NAME)


async def set_policy(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Create or replace one policy; the whole config is re-validated as a file is."""
    body = await json_body(request, s.read_timeout_s)
    if not isinstance(body, dict):
        raise InvalidArgument("body", "expected a JSON object {\"name\": ..., \"policy\": {...}}")
    extra = sorted(set(body) - {"name", "policy"})
    if extra:
        raise InvalidArgument(str(extra[0]), "not a field of the request (name, policy)")
    name = _policy_name(body.get("name"))
    if not isinstance(body.get("policy"), dict):
        raise InvalidArgument("policy", "is required (an object, as under policies.NAME)")
    created = name not in b.config().policies
    change, cfg = await b.policies.set(name, body["policy"])
    applied = v.PolicyApplied(name=name, version=change.version, action=change.action,
                              config_hash=change.config_hash, policy=cfg.policies[name])
    return json_response(v.dump(applied), 201 if created else 200)


async def revert_policy(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Undo the API's edits of a policy: back to the file's, or gone if the file has none."""
    name = _policy_name(request.match_info["name"])
    change, cfg = await b.policies.revert(name)
    applied = v.PolicyApplied(name=name, version=change.version, action=change.action,
                              config_hash=change.config_hash, policy=cfg.policies.get(name))
    return json_response(v.dump(applied))


async def pause(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Take a model out of routing; its candidates are listed as `paused` until resumed."""
    model = jsonwire.check_name("name", request.match_info["name"])
    body = await json_body(request, s.read_timeout_s, optional=True)
    reason = ""
    if body is not None:
        if not isinstance(body, dict) or set(body) - {"reason"}:
            raise InvalidArgument("body", "expected {\"reason\": \"...\"} or no body")
        reason = body.get("reason") or ""
        if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
            raise InvalidArgument("reason", f"expected printable text of at most {MAX_REASON} "
                                  "characters")
    record = await b.operator.pause(model, reason)
    return json_response(v.dump(v.PauseState(model=model, paused=True,
                                             paused_at=v.at(record.paused_at), reason=reason)))


async def resume(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Put a paused model back into routing (a model that was not paused stays as it is)."""
    model = jsonwire.check_name("name", request.match_info["name"])
    await b.operator.resume(model)
    return json_response(v.dump(v.PauseState(model=model, paused=False)))


async def reset_breaker(request: web.Request, b: Backend, s: Settings) -> web.Response:
    """Close a model's or provider's circuit breaker by hand."""
    scope = request.match_info["scope"]
    if scope != "model" and scope != "provider":  # noqa: PLR1714 - narrows to the Literal
        raise InvalidArgument("scope", f"expected model or provider (got {scope[:40]!r})")
    name = jsonwire.check_name("name", request.match_info["name"])
    reset, state = b.operator.reset_breaker(scope, name)
    return json_response(v.dump(v.BreakerState(scope=scope, name=name,
                                               breaker=state.status.value, reset=reset)))
