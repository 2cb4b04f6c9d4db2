"""The admin HTTP server: aiohttp on the event loop the gRPC server uses, no thread per client.

Clients are bounded: a connection that is idle, or has not sent a whole request head, is
closed after `idle_timeout_s`; a body must arrive within `read_timeout_s` and fit in
`max_request_bytes`. The server installs no signal handlers (the sidecar owns them). Every
refusal is a JSON error body; an unexpected failure is logged and answered 500 without
details.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from routing_sidecar.config import is_loopback_host
from routing_sidecar.errors import RoutingError
from routing_sidecar.grpc_api import jsonwire
from routing_sidecar.http_api import dashboard, openapi, status
from routing_sidecar.http_api.backend import Backend, Settings
from routing_sidecar.http_api.request import Refused, check_token
from routing_sidecar.http_api.routes import ENDPOINTS, Endpoint

log = logging.getLogger(__name__)

BACKEND = web.AppKey("backend", Backend)
SETTINGS = web.AppKey("settings", Settings)
PROTO_BODIES = (jsonwire.ROUTE_REQUEST, jsonwire.DECISION, jsonwire.OUTCOME,
                jsonwire.OUTCOME_ACK)
# Every answer: no sniffing, no framing, no referrer; the page loads only its own files.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
}

Respond = Callable[[], Awaitable[web.StreamResponse]]


async def answer(respond: Respond) -> web.StreamResponse:
    """The handler's response, or the error it raised as a JSON error body."""
    try:
        return await respond()
    except Refused as refused:
        return refused.response
    except RoutingError as exc:
        return status.from_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return status.from_http(exc)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error while serving an HTTP request")
        return status.error_response(500, "INTERNAL", "internal error")


@web.middleware
async def guard(request: web.Request,
                handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                ) -> web.StreamResponse:
    """Refuse foreign Host names on a loopback port, and answer every error as JSON."""
    if not request.app[SETTINGS].remote and not is_loopback_host(request.url.host or ""):
        # A page whose name was rebound to 127.0.0.1 must not reach the API.
        return status.error_response(421, "PERMISSION_DENIED",
                                     "host: this port answers only loopback names")
    return await answer(lambda: handler(request))


def _traced(e: Endpoint, request: web.Request, b: Backend, s: Settings,
            tracer: trace.Tracer) -> Respond:
    async def respond() -> web.StreamResponse:
        parent = propagate.extract(request.headers)
        span = tracer.start_span(
            f"{e.method} {e.path}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": e.method, "http.route": e.path,
                        "url.path": request.path, "url.scheme": "http"})
        with trace.use_span(span, end_on_exit=True):
            response = await answer(lambda: e.handler(request, b, s))
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_attribute("error.type", str(response.status))
                span.set_status(Status(StatusCode.ERROR))
            return response

    return respond


def _handler(e: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        b, s = request.app[BACKEND], request.app[SETTINGS]
        if e.access == "token" or (e.access == "data" and s.remote):
            check_token(request, s.token)
        if e.traced and b.tracer is not None:
            return await _traced(e, request, b, s, b.tracer)()
        return await e.handler(request, b, s)

    return handle


def _asset(name: str, media: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    body = dashboard.asset(name)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=media, charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    return serve


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)


def _openapi_spec() -> bytes:
    return json.dumps(openapi.document(ENDPOINTS, PROTO_BODIES)).encode()


def build_app(backend: Backend, settings: Settings) -> web.Application:
    """The aiohttp application: every endpoint of the route table, /openapi.json, assets."""
    app = web.Application(client_max_size=settings.max_request_bytes, middlewares=[guard])
    app[BACKEND] = backend
    app[SETTINGS] = settings
    for e in ENDPOINTS:
        app.router.add_route(e.method, e.path, _handler(e))
    spec: asyncio.Future[bytes] | None = None

    async def openapi_json(request: web.Request) -> web.Response:
        # Built on first request, on a thread: generating the JSON schemas takes tens of
        # milliseconds, which the start (right after gRPC serves) would otherwise block the
        # event loop for, delaying the first Routes and health checks.
        nonlocal spec
        if spec is None:
            spec = asyncio.ensure_future(asyncio.to_thread(_openapi_spec))
        return web.Response(body=await asyncio.shield(spec), content_type="application/json")

    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/static/app.js", _asset("app.js", "text/javascript"))
    app.router.add_get("/static/style.css", _asset("style.css", "text/css"))
    app.on_response_prepare.append(_security_headers)
    return app


class AdminServer:
    """The admin port, started and stopped with the sidecar."""

    def __init__(self, backend: Backend, settings: Settings, grace_s: float = 5.0) -> None:
        self.settings = settings
        self.backend = backend
        self._app = build_app(backend, settings)
        self._runner = web.AppRunner(
            self._app, handle_signals=False, access_log=None, shutdown_timeout=grace_s,
            keepalive_timeout=settings.idle_timeout_s)
        self.address = ""

    async def start(self) -> None:
        """Bind and serve; OSError naming `admin.listen` when the address cannot be bound."""
        listen = self.settings.listen
        host, _, port = listen.rpartition(":")
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(f"admin.listen: cannot bind {listen}: {exc.strerror}") from exc
        bound = self._runner.addresses[0][1]
        self.address = f"{host}:{bound}"
        log.info("admin port serving", extra={"address": self.address})

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish within the grace period, close."""
        await self._runner.cleanup()
