"""The status guards on a real grpc.aio server: nothing a handler raises leaves as UNKNOWN."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from routing_sidecar import errors
from routing_sidecar.grpc_api import wire
from routing_sidecar.grpc_api.status import streaming, unary


class Boom(BaseException):
    """Not an Exception: what a careless library (or a bug) might raise."""


class Guarded:
    """A tiny servicer whose methods raise what their request names."""

    @unary
    async def Unary(self, request: bytes, context: Any) -> bytes:
        raise _error(request)

    @streaming
    async def Stream(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            if request != b"ok":
                raise _error(request)
            yield b"ok"


def _error(request: bytes) -> BaseException:
    return {
        b"base": Boom("secret internals"),
        b"group": BaseExceptionGroup("many", [Boom("x"), ValueError("y")]),
        b"bug": KeyError("secret internals"),
        b"invalid": errors.InvalidArgument("field", "is bad"),
        b"full": errors.ResourceExhausted("labels[project]", "is full"),
    }[request]


@pytest.fixture
async def guarded() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    svc = Guarded()
    decode = wire.decoder(_Bytes)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            wire.guard_unary(svc.Unary), request_deserializer=decode),
        "Stream": grpc.stream_stream_rpc_method_handler(
            wire.guard_stream(svc.Stream), request_deserializer=decode),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Guard", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(0)


class _Bytes:
    """A 'message' whose FromString refuses bodies starting with 0xff, else passes them on."""

    class DESCRIPTOR:  # the shape wire.decoder reads
        name = "Bytes"

    @staticmethod
    def FromString(data: bytes) -> bytes:
        if data.startswith(b"\xff"):
            raise ValueError("cannot decode")
        return data


@pytest.mark.parametrize(("body", "code", "details"), [
    (b"base", grpc.StatusCode.INTERNAL, "internal error"),
    (b"group", grpc.StatusCode.INTERNAL, "internal error"),
    (b"bug", grpc.StatusCode.INTERNAL, "internal error"),
    (b"invalid", grpc.StatusCode.INVALID_ARGUMENT, "field: is bad"),
    (b"full", grpc.StatusCode.RESOURCE_EXHAUSTED, "labels[project]: is full"),
    (b"\xff", grpc.StatusCode.INVALID_ARGUMENT, "request: not a valid Bytes"),
])
async def test_unary_errors_leave_as_mapped_statuses(
    guarded: grpc.aio.Channel, caplog: pytest.LogCaptureFixture,
    body: bytes, code: grpc.StatusCode, details: str,
) -> None:
    caplog.set_level(logging.ERROR)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await guarded.unary_unary("/t.Guard/Unary")(body, timeout=10)
    assert (err.value.code(), err.value.details()) == (code, details)
    logged = [r for r in caplog.records if r.exc_info]
    # Only a bug is logged (with its traceback, for the operator); bad input never is.
    assert len(logged) == (code == grpc.StatusCode.INTERNAL)


@pytest.mark.parametrize(("body", "code", "details"), [
    (b"base", grpc.StatusCode.INTERNAL, "internal error"),
    (b"invalid", grpc.StatusCode.INVALID_ARGUMENT, "field: is bad"),
    (b"\xff", grpc.StatusCode.INVALID_ARGUMENT, "stream message 2: request: not a valid Bytes"),
])
async def test_stream_errors_leave_as_mapped_statuses_after_the_good_prefix(
    guarded: grpc.aio.Channel, body: bytes, code: grpc.StatusCode, details: str,
) -> None:
    async def bodies() -> AsyncIterator[bytes]:
        for b in (b"ok", b"ok", body, b"ok"):
            yield b

    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for answer in guarded.stream_stream("/t.Guard/Stream")(bodies(), timeout=10):
            got.append(answer)
    assert got == [b"ok", b"ok"]
    assert (err.value.code(), err.value.details()) == (code, details)
