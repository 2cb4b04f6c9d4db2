"""RouteStream: messages decided in order, committed side by side, answered in order.

A reader task takes the messages as they come and decides each one (`RoutingService.begin`)
before it takes the next (whose read it has started meanwhile), so every refusal of a message
(a bad field, a label cap, an undecodable body) is raised at its place and nothing after it is
decided. The commits (`RoutingService.finish`) run beside the reader, started together, so
the group writer puts a stream's decisions into shared transactions instead of one commit
each; the answers leave in request order, each only once its own row has committed. A caller
that waits for each answer before it writes the next message gets it as soon as it commits.

The reader starts the commits of what it has decided when the next message does not come at
once (see READ_TURNS) or GROUP are waiting. Up to WINDOW decisions wait for their commit or
their turn; past that the reader waits, and so do the caller's writes. A commit still running
when the stream ends (cancelled, or failed on an earlier message) is left to finish, so a
failed one still gives back its reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from opentelemetry import trace

from routing_sidecar import domain
from routing_sidecar.errors import InvalidArgument, ResourceExhausted
from routing_sidecar.grpc_api import convert
from routing_sidecar.grpc_api.observe import Observer
from routing_sidecar.ports import COMMITS_IN_BURSTS
from routing_sidecar.quick_init import quick_init
from routing_sidecar.service.routing import Routed, RoutingService
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb

WINDOW = 64  # decisions of one stream committing or waiting for their turn to be answered
GROUP = 32  # decided messages whose commits start together, at most
# A message the caller has already sent takes a few turns of the event loop to be read (the
# completion passes through gRPC's poller thread); a stream that waits that long before it
# commits what it decided commits bursts together, and a caller in lockstep loses only the
# turns. Measured: one turn groups nothing, four group a burst by the full GROUP.
READ_TURNS = 4


@quick_init
@dataclass(frozen=True, slots=True)
class Begun:
    """A message decided by the reader, its commit not started yet."""

    routed: Routed
    task: domain.Task
    started: float
    span: trace.Span | None

# What the reader hands the answering side, in request order: an answer to come, the error
# that ends the stream, or None for the stream's end.
Item = asyncio.Future[pb.Decision] | BaseException | None

_running: set[asyncio.Future[pb.Decision]] = set()  # commits outliving their stream


async def route_stream(
    requests: AsyncIterator[pb.RouteRequest], service: RoutingService, observe: Observer,
) -> AsyncIterator[pb.Decision]:
    """Decide a stream of tasks, answering in order."""
    queue: asyncio.Queue[Item] = asyncio.Queue(WINDOW)
    reader = asyncio.create_task(_read(requests, service, observe, queue))
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield await item
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _read(requests: AsyncIterator[pb.RouteRequest], service: RoutingService,
                observe: Observer, queue: asyncio.Queue[Item]) -> None:
    COMMITS_IN_BURSTS.set(True)  # this task's context: the commits it starts inherit it
    decided: list[Begun] = []
    messages = aiter(requests)
    index = 0
    read = asyncio.ensure_future(anext(messages))
    try:
        while True:
            if decided and (len(decided) >= GROUP or not await _arrives(read)):
                await _commit(decided, service, observe, queue)
            try:
                request = await read
            except StopAsyncIteration:
                break
            # The next read starts before this message is decided: gRPC takes it in meanwhile
            # and its completion is waiting when the reader next yields, not requested then.
            read = asyncio.ensure_future(anext(messages))
            decided.append(await _begin(index, request, service, observe))
            index += 1
    except asyncio.CancelledError:
        read.cancel()
        raise
    except BaseException as exc:  # handed over whole: it becomes the stream's status
        read.cancel()
        await _commit(decided, service, observe, queue)
        await queue.put(exc)
        return
    await _commit(decided, service, observe, queue)
    await queue.put(None)


async def _arrives(read: asyncio.Future[pb.RouteRequest]) -> bool:
    """True when the next message comes within a few turns of the loop (it was on its way)."""
    for _ in range(READ_TURNS):
        await asyncio.sleep(0)
        if read.done():
            return True
    return False


async def _begin(index: int, request: pb.RouteRequest, service: RoutingService,
                 observe: Observer) -> Begun:
    """Decide message `index` (nothing written yet), under a span of its own."""
    span = observe.stream_decision_span()
    started = time.perf_counter()
    scope = trace.use_span(span, end_on_exit=False) if span else contextlib.nullcontext()
    try:
        with scope:
            task = convert.task_from_pb(request)
            return Begun(await service.begin(task, observe.trace_ids()), task, started, span)
    except (InvalidArgument, ResourceExhausted) as exc:
        if span:
            span.end()
        raise type(exc)(f"stream message {index}: {exc.field}",
                        exc.message.removeprefix(f"{exc.field}: ")) from None
    except BaseException:
        if span:
            span.end()
        raise


async def _commit(decided: list[Begun], service: RoutingService, observe: Observer,
                  queue: asyncio.Queue[Item]) -> None:
    """Start the commits of the decided messages together: they share the writer's batch."""
    answers = []
    for begun in decided:
        scope = trace.use_span(begun.span, end_on_exit=False) if begun.span else (
            contextlib.nullcontext())
        with scope:  # the task copies the current context: it commits under the span
            answer = asyncio.ensure_future(_finish(begun, service, observe))
        _running.add(answer)
        answer.add_done_callback(_settled)
        answers.append(answer)
    decided.clear()
    for answer in answers:
        await queue.put(answer)


async def _finish(begun: Begun, service: RoutingService, observe: Observer) -> pb.Decision:
    try:
        decision = await service.finish(begun.routed)
        observe.decided(begun.task, decision, time.perf_counter() - begun.started)
        return convert.decision_to_pb(decision)
    finally:
        if begun.span:
            begun.span.end()


def _settled(answer: asyncio.Future[pb.Decision]) -> None:
    _running.discard(answer)
    if not answer.cancelled():
        answer.exception()  # retrieved: a commit nobody waits for any more is not an error
