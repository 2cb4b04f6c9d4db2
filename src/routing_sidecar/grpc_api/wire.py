"""Register the Router's handlers with request decoders that never raise.

grpc's generated registration decodes with `Message.FromString`; a body that does not decode
then leaves as UNKNOWN with the protobuf exception's class name in the details (and, on a
stream, as INTERNAL with a logged traceback). Here a body that does not decode becomes a
marker instead, and the handler answers INVALID_ARGUMENT `request: not a valid <Message>`
(on a stream: `stream message <i>: request: not a valid <Message>`) through the one status
table, before the servicer sees anything: nothing is decided, written or charged.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

from routing_sidecar.errors import InvalidArgument
from routing_sidecar.grpc_api.status import abort
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

M = TypeVar("M", bound=Message)
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler = Callable[[Any, Context], Any]
SERVICE: Final = pb.DESCRIPTOR.services_by_name["Router"]


class Undecodable:
    """Stands in for a request body that is not a valid `message`."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def problem(self) -> str:
        """The INVALID_ARGUMENT text, without the field."""
        return f"not a valid {self.message}"


def decoder(cls: type[M]) -> Callable[[bytes], M | Undecodable]:
    """`cls.FromString` that returns an Undecodable marker instead of raising."""
    marker = Undecodable(cls.DESCRIPTOR.name)

    def decode(data: bytes) -> M | Undecodable:
        try:
            return cls.FromString(data)
        except Exception:  # DecodeError, and whatever else a hostile body might provoke
            return marker

    return decode


def _refuse(request: Any) -> InvalidArgument | None:
    if isinstance(request, Undecodable):
        return InvalidArgument("request", request.problem())
    return None


def guard_unary(method: Callable[[Any, Any], Awaitable[Any]]) -> Handler:
    """A unary-request handler that refuses an undecodable body before calling `method`."""

    async def handler(request: Any, context: Context) -> Any:
        if (refusal := _refuse(request)) is not None:
            await abort(context, refusal)
        return await method(request, context)

    return handler


def guard_unary_stream(method: Callable[[Any, Any], Any]) -> Handler:
    """A unary-request, streamed-response handler that refuses an undecodable body first.

    The method may be an async generator, or a coroutine that streams with `context.write`
    (Complete: a client going away then cancels it wherever it waits); the handler keeps
    the method's shape, which is how grpc tells the two apart.
    """
    if not inspect.isasyncgenfunction(method):
        async def writer(request: Any, context: Context) -> None:
            if (refusal := _refuse(request)) is not None:
                await abort(context, refusal)
            await method(request, context)

        return writer

    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        if (refusal := _refuse(request)) is not None:
            await abort(context, refusal)
        async for response in method(request, context):
            yield response

    return handler


async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The request stream, raising INVALID_ARGUMENT (with the index) at an undecodable one.

    The servicer reads it, so its own guard (`status.streaming` / `status.unary`) turns the
    error into the RPC's status after the decodable prefix was answered, as it does for a
    malformed field.
    """
    index = 0
    async for request in requests:
        if isinstance(request, Undecodable):
            raise InvalidArgument(f"stream message {index}: request", request.problem())
        yield request
        index += 1


def guard_stream_unary(method: Callable[[Any, Any], Awaitable[Any]]) -> Handler:
    """A streamed-request, unary-response handler whose servicer reads a checked stream."""

    async def handler(requests: Any, context: Context) -> Any:
        return await method(checked(requests), context)

    return handler


def guard_stream(method: Callable[[Any, Any], AsyncIterator[Any]]) -> Handler:
    """A bidi streaming handler whose servicer reads a checked stream."""

    async def handler(requests: Any, context: Context) -> AsyncIterator[Any]:
        async for response in method(checked(requests), context):
            yield response

    return handler


# (client streams, server streams) -> guard and grpc's handler factory for that shape.
_SHAPES: dict[tuple[bool, bool], tuple[Callable[[Any], Handler], Any]] = {
    (False, False): (guard_unary, grpc.unary_unary_rpc_method_handler),
    (False, True): (guard_unary_stream, grpc.unary_stream_rpc_method_handler),
    (True, False): (guard_stream_unary, grpc.stream_unary_rpc_method_handler),
    (True, True): (guard_stream, grpc.stream_stream_rpc_method_handler),
}


def add_router(servicer: pb_grpc.RouterServicer, server: grpc.aio.Server) -> None:
    """Register `servicer` on `server` as `routing_sidecar.v1.Router`, decoding defensively.

    Built from the service descriptor, so every method of the proto is registered here, in
    place of the generated `add_RouterServicer_to_server`, with no edit when one is added.
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        guard, factory = _SHAPES[method.client_streaming, method.server_streaming]
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        handlers[method.name] = factory(
            guard(getattr(servicer, method.name)), request_deserializer=decoder(request),
            response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
