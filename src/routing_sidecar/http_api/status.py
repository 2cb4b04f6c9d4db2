"""The one table mapping the error tree to HTTP statuses, and the error body every one gets."""

from __future__ import annotations

import re

from aiohttp import web

from routing_sidecar import errors
from routing_sidecar.http_api.views import ErrorBody, ErrorDetail, dump

# (HTTP status, the gRPC status name the same error gets on the Router service)
STATUS_FOR: dict[type[errors.RoutingError], tuple[int, str]] = {
    errors.InvalidArgument: (400, "INVALID_ARGUMENT"),
    errors.NotFound: (404, "NOT_FOUND"),
    errors.AlreadyExists: (409, "ALREADY_EXISTS"),
    errors.FailedPrecondition: (409, "FAILED_PRECONDITION"),
    errors.ResourceExhausted: (429, "RESOURCE_EXHAUSTED"),  # a new label value beyond its cap
    # Over HTTP a config error is a refused policy edit: the request's fault.
    errors.ConfigError: (400, "INVALID_ARGUMENT"),
    errors.Unavailable: (503, "UNAVAILABLE"),
    errors.StorageError: (503, "UNAVAILABLE"),
    errors.Internal: (500, "INTERNAL"),
}
# aiohttp's own refusals (unknown path, wrong method, body too large ...), by HTTP status.
CODE_FOR_HTTP = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED", 409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 421: "PERMISSION_DENIED",
    429: "RESOURCE_EXHAUSTED", 431: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE",
}


FIELD_PREFIX = re.compile(r"([A-Za-z_][A-Za-z0-9_.\[\]]*): ")


def status_for(exc: errors.RoutingError) -> tuple[int, str]:
    """HTTP status and status name of an error: the nearest mapped class in its MRO."""
    for cls in type(exc).__mro__:
        found = STATUS_FOR.get(cls)
        if found is not None:
            return found
    return 500, "INTERNAL"


def error_response(status: int, code: str, message: str, *, field: str | None = None,
                   problems: list[str] | None = None, retryable: bool = False,
                   headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error body with its status."""
    body = ErrorBody(error=ErrorDetail(code=code, message=message, field=field,
                                       problems=problems or [], retryable=retryable))
    return web.json_response(dump(body), status=status, headers=headers)


def _field(message: str) -> str | None:
    """The path a message starts with ("attempts[0].model: ..."), if it starts with one."""
    found = FIELD_PREFIX.match(message)
    return found.group(1) if found else None


def from_error(exc: errors.RoutingError) -> web.Response:
    """The answer to a RoutingError raised while serving a request."""
    status, code = status_for(exc)
    problems = exc.problems if isinstance(exc, errors.ConfigError) else None
    message = problems[0] if problems else exc.message
    field = exc.field if isinstance(exc, errors.InvalidArgument) else _field(message)
    return error_response(status, code, message, field=field, problems=problems,
                          retryable=exc.retryable)


def from_http(exc: web.HTTPException) -> web.Response:
    """The web framework's own refusal (404, 405, 413 ...) as a JSON error body."""
    status = exc.status
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
    return error_response(status, CODE_FOR_HTTP.get(status, "INVALID_ARGUMENT"),
                          exc.reason or "refused", headers=headers)
