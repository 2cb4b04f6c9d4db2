"""Who may call the gRPC port: TLS credentials, the bearer-token interceptor, and the client side.

On a remote listen address the server takes `server.tls` (optionally mutual) and/or
`server.token_file`. With a token, every call must carry `authorization: Bearer <token>`,
compared in constant time; health checks and reflection stay open so that probes and
tooling need no secret (they reveal serving state and the public schema, nothing else).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from routing_sidecar.errors import ConfigError

# Services any caller may use without the token: probes and schema discovery.
OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})
REFUSED = "missing or wrong bearer token (authorization: Bearer <token of server.token_file>)"


def read_file(path: str, key: str, source: str) -> bytes:
    """The bytes of a credential file; ConfigError naming `key` when it cannot be read or is empty.

    The message names the file, never its content.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [f"{key}: cannot read {path}: {exc.strerror}"]) from None
    if not data.strip():
        raise ConfigError(source, [f"{key}: {path} is empty"])
    return data


def read_token(path: str, key: str, source: str) -> bytes:
    """A bearer token file's one token (surrounding whitespace dropped); printable ASCII only."""
    token = read_file(path, key, source).strip()
    if not all(0x21 <= b <= 0x7E for b in token):
        raise ConfigError(source, [f"{key}: {path} must hold one token of printable ASCII"])
    return token


@dataclass(frozen=True)
class ServerSecurity:
    """What the gRPC port requires: TLS credentials, a token, both, or neither (local only)."""

    credentials: grpc.ServerCredentials | None = None
    token: bytes | None = field(default=None, repr=False)  # never in a repr, log or error

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The token check when there is a token, else nothing."""
        return [TokenInterceptor(self.token)] if self.token else []


def read_pem(path: str, key: str, source: str, kind: str) -> bytes:
    """A PEM file holding a `kind` block (CERTIFICATE, PRIVATE KEY); ConfigError otherwise."""
    data = read_file(path, key, source)
    if f"{kind}-----".encode() not in data:
        raise ConfigError(source, [f"{key}: {path} holds no PEM {kind.lower()}"])
    return data


def tls_credentials(cert: bytes, key: bytes, client_ca: bytes | None) -> grpc.ServerCredentials:
    """Server TLS; with a client CA, clients must present a certificate it signed (mTLS)."""
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)


def _token_of(metadata: tuple[tuple[str, str | bytes], ...] | None) -> bytes:
    for name, value in metadata or ():
        if name == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip().encode("latin-1") if scheme.lower() == "bearer" else b""
    return b""


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses every call outside OPEN_SERVICES that lacks the bearer token: UNAUTHENTICATED."""

    def __init__(self, token: bytes) -> None:
        self._token = token

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        """The method's own handler when the call may proceed, else one that refuses it."""
        handler = await continuation(details)
        service = details.method.lstrip("/").partition("/")[0]
        if handler is None or service in OPEN_SERVICES:
            return handler
        # compare_digest: the time taken says nothing about how much of the token matched.
        if hmac.compare_digest(_token_of(details.invocation_metadata), self._token):
            return handler
        return _refusal(handler)


async def _abort(context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses before reading any request."""
    async def unary(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _abort(context)

    async def streaming(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await _abort(context)
        yield  # pragma: no cover - abort raises; this makes the function a generator

    kind = (handler.request_streaming, handler.response_streaming)
    factory, behaviour = {
        (False, False): (grpc.unary_unary_rpc_method_handler, unary),
        (False, True): (grpc.unary_stream_rpc_method_handler, streaming),
        (True, False): (grpc.stream_unary_rpc_method_handler, unary),
        (True, True): (grpc.stream_stream_rpc_method_handler, streaming),
    }[kind]
    return factory(behaviour, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


# -- the client side (the CLI) ---------------------------------------------------------------

@dataclass(frozen=True)
class ClientAuth:
    """How the CLI dials: a bearer token to send, and a CA to trust for TLS."""

    token: bytes | None = field(default=None, repr=False)
    ca: bytes | None = None


_client = ClientAuth()


def use_client_auth(auth: ClientAuth) -> None:
    """Dial every later CLI channel with `auth` (one process, one target: set once)."""
    global _client  # noqa: PLW0603 - the CLI's one setting, read by every command's dial
    _client = auth


def dial(target: str) -> grpc.Channel:
    """A channel to `target`: TLS when a CA is set, the token on every call when one is set."""
    auth = _client
    if auth.ca is None and auth.token is None:
        return grpc.insecure_channel(target)
    if auth.ca is None:  # a token over plain text: only sensible on a trusted network
        return grpc.intercept_channel(grpc.insecure_channel(target), _TokenHeader(auth.token))
    creds = grpc.ssl_channel_credentials(root_certificates=auth.ca)
    if auth.token is not None:
        creds = grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials(auth.token.decode("ascii")))
    return grpc.secure_channel(target, creds)


class _TokenHeader(grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
                   grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds the bearer token to each call of a plain-text channel."""

    def __init__(self, token: bytes | None) -> None:
        self._header = ("authorization", f"Bearer {(token or b'').decode('ascii')}")

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return _Details(details.method, details.timeout, metadata, details.credentials,
                        details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """Send the call with the token."""
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        """Send the call with the token."""
        return continuation(self._with_token(details), request)


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any
