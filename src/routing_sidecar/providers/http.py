"""The HTTP half every wire format shares: a pooled client, the POST, SSE, failures mapped.

A subclass gives the path, the auth headers, the request body and the two parsers (stream
events, whole response); this base sends it with httpx, reads Server-Sent Events with
httpx-sse, and turns every HTTP status and transport failure into a classified ProviderError.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource

from routing_sidecar.calls import ProviderCall, ProviderSettings, Secret, StreamEnd, StreamEvent
from routing_sidecar.domain import AttemptStatus
from routing_sidecar.errors import ProviderError
from routing_sidecar.providers.base import (
    AttemptState,
    ErrorObject,
    error_object,
    failure_from_error,
    parse_retry_after,
    safe_text,
    timed_events,
)

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024  # an error body is read this far, never more


class StreamParser(Protocol):
    """Turns one wire format's SSE events into stream events."""

    @property
    def done(self) -> bool:
        """True once the end marker was seen."""
        ...

    def feed(self, event: str, data: str) -> list[StreamEvent]:
        """The events one SSE event carries; raises ProviderError for an error object."""
        ...

    def at_eof(self) -> list[StreamEvent]:
        """The body ended before the end marker: the last events, or raise (a cut stream)."""
        ...


def load_json(provider: str, data: str | bytes) -> Any:
    """Parsed JSON, or a transient ProviderError naming what could not be read."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ProviderError(f"{provider}: the provider sent a body that is not JSON",
                            status=AttemptStatus.TRANSIENT_ERROR,
                            error_type="bad_response") from None


class HttpProvider:
    """Base of the HTTP adapters: one pooled httpx.AsyncClient per provider."""

    path: ClassVar[str]

    def __init__(self, settings: ProviderSettings, key: Secret | None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        self._key = key
        self._host = urlsplit(settings.base_url).hostname or settings.base_url
        n = settings.max_connections
        self._client = httpx.AsyncClient(
            base_url=settings.base_url,
            headers=dict(settings.headers),  # never credentials: config refuses those
            # httpx's own read timeout is the total; first-token and total deadlines over the
            # whole attempt are enforced by timed_events.
            timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            follow_redirects=False,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self._settings.base_url!r})"

    @property
    def name(self) -> str:
        """The provider's name in the config."""
        return self._settings.name

    def has_credentials(self) -> bool:
        """False when a key is needed and none could be read."""
        return not self._settings.key_required or self._key is not None

    def stream(self, call: ProviderCall) -> AsyncGenerator[StreamEvent, None]:
        """Make the call; text deltas then one StreamEnd, under the provider's deadlines."""
        state = AttemptState()
        return timed_events(self._attempt(call, state), state, self._settings,
                            streamed=call.stream)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    # --- what a wire format provides -----------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _body(self, call: ProviderCall) -> dict[str, Any]:
        raise NotImplementedError

    def _stream_parser(self, call: ProviderCall, state: AttemptState) -> StreamParser:
        raise NotImplementedError

    def _parse_whole(self, body: Any, state: AttemptState) -> list[StreamEvent]:
        raise NotImplementedError

    # --- the shared HTTP exchange --------------------------------------------------------

    async def _attempt(self, call: ProviderCall, state: AttemptState
                       ) -> AsyncGenerator[StreamEvent, None]:
        if not self.has_credentials():
            raise ProviderError(f"{self.name}: no credentials",
                                status=AttemptStatus.PERMANENT_ERROR, error_type="no_credentials")
        headers = {"accept": "text/event-stream" if call.stream else "application/json",
                   **self._auth_headers()}
        try:
            async with self._client.stream("POST", self.path, json=self._body(call),
                                           headers=headers) as resp:
                if resp.status_code >= 300:
                    raise await self._status_error(resp)
                async with aclosing(self._events(resp, call, state)) as events:
                    async for event in events:
                        yield event
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    async def _events(self, resp: httpx.Response, call: ProviderCall, state: AttemptState
                      ) -> AsyncGenerator[StreamEvent, None]:
        if "text/event-stream" not in resp.headers.get("content-type", ""):
            # Asked to stream, some compatible servers answer whole: parse that instead.
            for event in self._parse_whole(load_json(self.name, await resp.aread()), state):
                yield event
            return
        parser = self._stream_parser(call, state)
        ended = False
        async with aclosing(EventSource(resp).aiter_sse()) as sse_events:
            async for sse in sse_events:
                if ended:
                    continue  # drained so the connection goes back to the pool
                for event in parser.feed(sse.event, sse.data):
                    ended = ended or isinstance(event, StreamEnd)
                    yield event
        if not ended:
            for event in parser.at_eof():
                yield event

    async def _status_error(self, resp: httpx.Response) -> ProviderError:
        raw = bytearray()
        async for chunk in resp.aiter_bytes():
            raw += chunk
            if len(raw) >= MAX_ERROR_BODY:
                break
        try:
            body = json.loads(bytes(raw[:MAX_ERROR_BODY]))
        except (ValueError, UnicodeDecodeError):
            body = None
        err = error_object(body) or ErrorObject(None, None, "")
        retry_after = parse_retry_after(resp.headers, time.time())
        return failure_from_error(self.name, err, self._key, http_status=resp.status_code,
                                  retry_after_s=retry_after)

    def _transport_error(self, exc: httpx.HTTPError) -> ProviderError:
        status, error_type = AttemptStatus.TRANSIENT_ERROR, "http_error"
        if isinstance(exc, httpx.ConnectTimeout):
            status, error_type = AttemptStatus.TIMEOUT, "connect_timeout"
        elif isinstance(exc, httpx.PoolTimeout):
            status, error_type = AttemptStatus.TIMEOUT, "pool_timeout"
        elif isinstance(exc, httpx.TimeoutException):
            status, error_type = AttemptStatus.TIMEOUT, "read_timeout"
        elif isinstance(exc, httpx.ConnectError):
            error_type = "connect_error"
        elif isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            error_type = "stream_error"
        detail = safe_text(str(exc), self._key) or type(exc).__name__
        log.debug("provider transport failure", extra={
            "provider": self.name, "error_type": error_type,
        })
        return ProviderError(f"{self.name}: {error_type} talking to {self._host}: {detail}",
                             status=status, error_type=error_type)
