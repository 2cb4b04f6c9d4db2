"""The one table mapping the error tree to gRPC status codes, and the guards that apply it.

Whatever a servicer raises leaves as a mapped status: never as grpc's own UNKNOWN with a
class name in the details. Only the exceptions that steer control flow pass through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import grpc

from routing_sidecar import errors

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[errors.RoutingError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.StorageError: grpc.StatusCode.UNAVAILABLE,
    errors.Internal: grpc.StatusCode.INTERNAL,
}

# Re-raised untouched: grpc's own abort, the RPC's cancellation, an async generator being
# closed (catching that and awaiting is an error), and the process being told to stop.
PASS_THROUGH: tuple[type[BaseException], ...] = (
    grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit, KeyboardInterrupt, SystemExit,
)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def code_for(exc: BaseException) -> grpc.StatusCode:
    """Status code for an exception: the nearest mapped class in its MRO, else INTERNAL."""
    for cls in type(exc).__mro__:
        code = STATUS_FOR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """Abort the RPC with the mapped status; unexpected errors are logged, never echoed."""
    if isinstance(exc, errors.RoutingError):
        await context.abort(code_for(exc), exc.message)
    log.error("unexpected error while serving an RPC", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    raise AssertionError("context.abort returned")  # pragma: no cover


def unary(
    fn: Callable[[Any, Req, Any], Awaitable[Resp]],
) -> Callable[[Any, Req, Any], Awaitable[Resp]]:
    """Decorate a unary servicer method so errors become mapped gRPC statuses."""

    @wraps(fn)
    async def wrapper(self: Any, request: Req, context: Any) -> Resp:
        try:
            return await fn(self, request, context)
        except PASS_THROUGH:
            raise
        except BaseException as exc:  # every other kind leaves as a status
            await abort(context, exc)

    return wrapper


def streaming(
    fn: Callable[[Any, Req, Any], AsyncIterator[Resp]],
) -> Callable[[Any, Req, Any], AsyncIterator[Resp]]:
    """Decorate a streaming servicer method so errors become mapped gRPC statuses.

    That includes errors raised while the request stream is read, since the method reads it.
    """

    @wraps(fn)
    async def wrapper(self: Any, request: Req, context: Any) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except PASS_THROUGH:
            raise
        except BaseException as exc:  # every other kind leaves as a status
            await abort(context, exc)

    return wrapper
