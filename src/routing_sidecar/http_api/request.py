"""Reading requests: JSON bodies within a time and size bound, query parameters, the token."""

from __future__ import annotations

import asyncio
import hmac
import math
from typing import Any

import orjson
from aiohttp import web

from routing_sidecar.errors import InvalidArgument
from routing_sidecar.grpc_api import jsonwire
from routing_sidecar.http_api.status import error_response

JSON = "application/json"


class Refused(Exception):
    """A request refused before it reaches a handler's logic (401, 403, 408, 415)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


async def json_body(request: web.Request, timeout_s: float, *, optional: bool = False) -> Any:
    """The decoded JSON body; a missing one is None when `optional`.

    Only `application/json` is read: a form or text/plain POST, which a web page may send
    across origins without asking, is refused before anything is decided.
    """
    if optional and not request.body_exists:
        return None
    if request.content_type != JSON:
        raise Refused(error_response(
            415, "INVALID_ARGUMENT", f"body: expected Content-Type {JSON}", field="body"))
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        late = error_response(408, "DEADLINE_EXCEEDED",
                              f"body: not received within {timeout_s:g}s", field="body")
        late.force_close()  # the rest of a slow body is not worth waiting for
        raise Refused(late) from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidArgument("body", "not valid JSON") from None


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or InvalidArgument naming it."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(name, f"expected an integer (got {text[:40]!r})") from None
    if not low <= value <= high:
        raise InvalidArgument(name, f"must be {low}..{high} (got {value})")
    return value


def query_name(request: web.Request, name: str, max_len: int = 128) -> str | None:
    """An identifier query parameter (model, task type ...), checked as the RPCs check it."""
    text = request.query.get(name)
    if text is None or text == "":
        return None
    return jsonwire.check_name(name, text, max_len)


def finite(value: float) -> float:
    """A float safe to put in JSON (NaN and infinities become 0)."""
    return value if math.isfinite(value) else 0.0


def bearer(request: web.Request) -> str | None:
    """The bearer token of the Authorization header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def check_token(request: web.Request, expected: str | None) -> None:
    """Refuse unless the request carries the admin token (401 without one, 403 if wrong)."""
    if expected is None:
        raise Refused(error_response(
            403, "PERMISSION_DENIED",
            "changes through the HTTP API are off: set admin.token_file to allow them"))
    given = bearer(request)
    if given is None:
        raise Refused(error_response(
            401, "UNAUTHENTICATED", "a bearer token is required (Authorization: Bearer ...)",
            headers={"WWW-Authenticate": 'Bearer realm="routing-sidecar"'}))
    # Constant time, so the comparison does not tell how much of a guess was right.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Refused(error_response(403, "PERMISSION_DENIED", "the bearer token is not valid"))
