"""The bundled fake provider: an aiohttp server on loopback speaking both wire formats.

`POST /v1/chat/completions` (OpenAI style) and `POST /v1/messages` (Anthropic style), streamed
or whole, behave as the requested model name scripts it (fake_script.py: `fake-ok`,
`fake-slow-300`, `fake-429-2`, `fake-cut-2`, `fake-flaky-2`, `fake-error-event`, ...). Every
request is recorded (path, model, headers with their values, body, tokens sent, and whether
the client disconnected before the response ended): in process through `requests()`,
`wait_for()` and `reset()`, over HTTP as JSON at `GET /_fake/requests` (`DELETE` resets).

`routing-sidecar fake-provider --listen 127.0.0.1:9900` runs one in the foreground (`serve`).
It accepts any key: it is a test double, never a place for real credentials.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from aiohttp import web

from routing_sidecar.providers import fake_script
from routing_sidecar.providers import fake_wire as wire
from routing_sidecar.providers.fake_wire import Answer

KEEPALIVE_S = 0.1  # while a slow script waits, a comment (OpenAI) or ping (Anthropic) this often
MAX_RECORDS = 10_000  # a demo server running for days keeps only the latest requests
OPENAI, ANTHROPIC = "openai", "anthropic"


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One request the fake received and how it went."""

    index: int
    path: str
    model: str
    headers: Mapping[str, str]  # names lower-cased (HTTP names are case-insensitive)
    body: Any
    stream: bool = False
    status: int = 200
    tokens_sent: int = 0
    finished: bool = False  # the response went out to its end
    server_cut: bool = False  # the script dropped the connection (cut-N)
    disconnected: bool = False  # the client went away before the response ended

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON types."""
        out = asdict(self)
        out["headers"] = dict(self.headers)
        return out


class FakeProviderServer:
    """A scriptable provider on a loopback port; start() it, read its records, stop() it."""

    def __init__(self) -> None:
        self._records: deque[FakeRequest] = deque(maxlen=MAX_RECORDS)
        self._seen: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._changed: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0

    @property
    def base_url(self) -> str:
        """http://HOST:PORT of the running server."""
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0: any free port); raises OSError when it cannot bind."""
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_get("/_fake/requests", self._list)
        app.router.add_delete("/_fake/requests", self._clear)
        # handler_cancellation: a client that goes away cancels its handler at once, which is
        # how a disconnect mid-stream is seen (and recorded) without waiting for a write.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        self.host, self.port = str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeProviderServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def requests(self) -> tuple[FakeRequest, ...]:
        """Requests received since the start or the last reset (the latest MAX_RECORDS)."""
        return tuple(self._records)

    def reset(self) -> None:
        """Forget the records and the flaky counters."""
        self._records.clear()
        self._seen.clear()

    async def wait_for(self, predicate: Callable[[FakeRequest], bool],
                       timeout_s: float = 5.0) -> FakeRequest:
        """The first record matching `predicate`, waiting up to `timeout_s` for one."""
        assert self._changed is not None, "server not started"
        async with asyncio.timeout(timeout_s), self._changed:
            while True:
                for record in self._records:
                    if predicate(record):
                        return record
                await self._changed.wait()

    async def _update(self, index: int, **changes: Any) -> None:
        pos = next((i for i, r in enumerate(self._records) if r.index == index), None)
        if pos is not None:
            self._records[pos] = replace(self._records[pos], **changes)
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    # --- endpoints -------------------------------------------------------------------------

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response([r.to_json() for r in self._records])

    async def _clear(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"cleared": True})

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, OPENAI)

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, ANTHROPIC)

    async def _handle(self, request: web.Request, fmt: str) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        model = body.get("model") if isinstance(body, dict) else None
        index = next(self._ids)
        self._records.append(FakeRequest(
            index, request.path, model if isinstance(model, str) else "",
            {k.lower(): v for k, v in request.headers.items()}, body,
            stream=bool(isinstance(body, dict) and body.get("stream")),
        ))
        await self._update(index)
        try:
            return await self._respond(request, fmt, index, body)
        except (asyncio.CancelledError, ConnectionResetError):
            record = next(r for r in self._records if r.index == index)
            if not record.finished and not record.server_cut:
                await self._update(index, disconnected=True)
            raise

    async def _respond(self, request: web.Request, fmt: str, index: int, body: Any,
                       ) -> web.StreamResponse:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return await self._error(index, fmt, 400, "the body needs a JSON object with a model")
        model: str = body["model"]
        try:
            script = fake_script.parse_model(model)
        except fake_script.ScriptError as exc:
            return await self._error(index, fmt, 400, str(exc))
        self._seen[model] += 1
        status = script.failure_for(self._seen[model])
        if status is not None:
            return await self._error(index, fmt, status, f"fake failure {status}", script)
        contents = wire.contents_of(fmt, body)
        tokens, truncated = fake_script.answer_tokens(
            fake_script.prompt_of(contents), script, wire.max_tokens_of(body))
        answer = Answer(f"fake-{index}", model, tuple(tokens), truncated,
                        fake_script.count_tokens(contents), script.cost_micros)
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return await self._stream(request, fmt, index, script, answer, include_usage)
        return await self._whole(request, fmt, index, script, answer)

    async def _error(self, index: int, fmt: str, status: int, message: str,
                     script: fake_script.Script | None = None) -> web.Response:
        headers: dict[str, str] = {}
        if script is not None and script.retry_after_ms is not None:
            headers["retry-after-ms"] = str(script.retry_after_ms)
        elif script is not None and script.retry_after_s is not None:
            headers["retry-after"] = str(script.retry_after_s)
        payload = (wire.openai_error_body(status, message) if fmt == OPENAI
                   else wire.anthropic_error_body(status, message))
        await self._update(index, status=status, finished=True)
        return web.json_response(payload, status=status, headers=headers)

    async def _whole(self, request: web.Request, fmt: str, index: int,
                     script: fake_script.Script, answer: Answer) -> web.StreamResponse:
        await asyncio.sleep(script.first_token_delay_s)
        if script.cut_after is not None:
            return await self._cut(request, index, web.StreamResponse())
        if script.error_event:
            payload = (wire.openai_error_body(500, "fake stream error") if fmt == OPENAI
                       else wire.anthropic_error_body(529, "Overloaded"))
        else:
            payload = wire.openai_whole(answer) if fmt == OPENAI else wire.anthropic_whole(answer)
        await self._update(index, tokens_sent=0 if script.error_event else len(answer.tokens),
                           finished=True)
        return web.json_response(payload)

    async def _stream(self, request: web.Request, fmt: str, index: int,
                      script: fake_script.Script, answer: Answer, include_usage: bool,
                      ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream",
                                           "cache-control": "no-cache"})
        await resp.prepare(request)
        if fmt == ANTHROPIC:
            for frame in wire.anthropic_head(answer):
                await resp.write(frame)
        await self._keepalive(resp, fmt, script.first_token_delay_s)
        stop_at = script.tokens_before_end(len(answer.tokens))
        for i, token in enumerate(answer.tokens[:stop_at]):
            if i and script.tokens_per_s:
                await asyncio.sleep(1.0 / script.tokens_per_s)
            delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
            await resp.write(wire.anthropic_delta(token) if fmt == ANTHROPIC
                             else wire.sse(wire.openai_chunk(answer, delta)))
            await self._update(index, tokens_sent=i + 1)
        if script.error_event:
            await resp.write(wire.anthropic_stream_error() if fmt == ANTHROPIC
                             else wire.openai_stream_error())
        elif script.cut_after is not None:
            return await self._cut(request, index, resp)
        else:
            tail = (wire.anthropic_tail(answer) if fmt == ANTHROPIC
                    else wire.openai_tail(answer, include_usage))
            for frame in tail:
                await resp.write(frame)
        await resp.write_eof()
        await self._update(index, finished=True)
        return resp

    async def _keepalive(self, resp: web.StreamResponse, fmt: str, delay_s: float) -> None:
        """Wait out a slow first token, sending keep-alives that are not content."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay_s
        while (left := until - loop.time()) > 0:
            await asyncio.sleep(min(KEEPALIVE_S, left))
            if until - loop.time() > 0:
                await resp.write(wire.anthropic_ping() if fmt == ANTHROPIC
                                 else b": keep-alive\n\n")

    async def _cut(self, request: web.Request, index: int, resp: web.StreamResponse,
                   ) -> web.StreamResponse:
        """Drop the connection mid-body, as a crashed upstream would."""
        await self._update(index, server_cut=True)
        if request.transport is not None:
            request.transport.close()
        return resp


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT split; raises ValueError for anything else."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


async def serve(listen: str, on_ready: Callable[[str], None] | None = None) -> int:
    """Run a fake provider until SIGTERM or SIGINT; OSError when the address cannot be bound."""
    host, port = parse_listen(listen)
    server = FakeProviderServer()
    await server.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(server.base_url)
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0
