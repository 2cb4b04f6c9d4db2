"""The Router servicer: thin adapters from protobuf to the routing service and back."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from routing_sidecar import domain, logs
from routing_sidecar.errors import (
    FailedPrecondition,
    InvalidArgument,
    StorageError,
    Unavailable,
)
from routing_sidecar.grpc_api import (
    convert,
    convert_cache,
    convert_complete,
    convert_outcome,
    convert_stats,
    observe,
)
from routing_sidecar.grpc_api.route_stream import route_stream
from routing_sidecar.grpc_api.status import streaming, unary
from routing_sidecar.ports import AuditLog, CacheUsage, Clock
from routing_sidecar.service.cache import CacheService
from routing_sidecar.service.complete import CompleteService, Done, ready_batches
from routing_sidecar.service.limits import fold_scope
from routing_sidecar.service.outcomes import OutcomeService
from routing_sidecar.service.routing import RoutingService
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _traced(
    fn: Callable[[Any, Req, Any], Awaitable[Resp]],
) -> Callable[[Any, Req, Any], Awaitable[Resp]]:
    """Run a unary method inside its RPC's server span (`self._observe.rpc`)."""

    @wraps(fn)
    async def wrapper(self: Any, request: Req, context: Any) -> Resp:
        with self._observe.rpc(fn.__name__, context):
            return await fn(self, request, context)

    return wrapper


def _traced_stream(
    fn: Callable[[Any, Req, Any], AsyncIterator[Resp]],
) -> Callable[[Any, Req, Any], AsyncIterator[Resp]]:
    """Run a streaming method inside its RPC's server span (`self._observe.rpc`)."""

    @wraps(fn)
    async def wrapper(self: Any, request: Req, context: Any) -> AsyncIterator[Resp]:
        with self._observe.rpc(fn.__name__, context):
            async for item in fn(self, request, context):
                yield item

    return wrapper


class RouterServicer(pb_grpc.RouterServicer):
    """Implements routing_sidecar.v1.Router over a RoutingService."""

    def __init__(
        self, service: RoutingService, outcomes: OutcomeService, audit: AuditLog, clock: Clock,
        observer: observe.Observer | None = None, complete: CompleteService | None = None,
    ) -> None:
        self._service = service
        self._complete = complete
        self._outcomes = outcomes
        self._audit = audit
        self._clock = clock
        self._observe = observer or observe.disabled(clock)

    @unary
    @_traced
    async def Route(self, request: pb.RouteRequest, context: Any) -> pb.Decision:
        """Decide one task."""
        started = time.perf_counter()
        task = convert.task_from_pb(request)
        decision = await self._service.route(task, self._observe.trace_ids())
        self._observe.decided(task, decision, time.perf_counter() - started)
        return convert.decision_to_pb(decision)

    @streaming
    @_traced_stream
    async def RouteStream(
        self, request_iterator: AsyncIterator[pb.RouteRequest], context: Any
    ) -> AsyncIterator[pb.Decision]:
        """Decide a stream of tasks, answering in order (see route_stream.py)."""
        async for decision in route_stream(request_iterator, self._service, self._observe):
            yield decision

    @unary
    @_traced
    async def ReportOutcome(self, request: pb.Outcome, context: Any) -> pb.OutcomeAck:
        """Record what happened to a decision and settle its reservation."""
        outcome = convert_outcome.outcome_from_pb(request)
        logs.bind_decision(outcome.decision_id)
        ack = await self._outcomes.report(outcome)
        self._observe.reported(ack)
        return convert_stats.ack_to_pb(ack)

    @unary
    @_traced
    async def GetBudgetStatus(self, request: pb.BudgetQuery, context: Any) -> pb.BudgetStatusList:
        """Every budget scope (or the requested ones) in its current period."""
        for i, scope in enumerate(request.scopes):
            convert.check_scope(f"scopes[{i}]", scope)
        casefold = self._service.state.settings.limits.casefold_scope_labels
        scopes = tuple(fold_scope(s, casefold) for s in request.scopes)
        statuses = await self._service.ledger.status(self._clock.now(), scopes)
        return convert_outcome.budget_list_to_pb(statuses)

    @unary
    @_traced
    async def GetRoutingStats(self, request: pb.StatsQuery, context: Any) -> pb.RoutingStats:
        """The model x task type / label matrix and per-provider totals over a window."""
        if not 0 <= request.hours <= 24 * 366:
            raise InvalidArgument("hours", f"must be 0..{24 * 366} (got {request.hours})")
        for i, key in enumerate(request.label_keys):
            convert.check_label_key(f"label_keys[{i}]", key)
        now = self._clock.now()
        since = now - (request.hours or 24) * 3600.0
        stats = await self._audit.routing_stats(since, tuple(request.label_keys))
        report = self._service.learner.report(now, self._service.catalog.providers())
        usage: tuple[CacheUsage, ...] = ()
        if self._service.cache is not None:
            try:
                usage = (await self._service.cache.report(since)).usage
            except StorageError:  # the routing report goes on without the cache's rows
                log.warning("cache usage left out of the routing stats: the cache is down")
        return convert_stats.stats_to_pb(stats, now, report, usage)

    @unary
    @_traced
    async def GetCacheStats(self, request: pb.CacheQuery, context: Any) -> pb.CacheStats:
        """What the response cache holds, and its hits, misses and savings over a window."""
        query = convert_cache.query_from_pb(request, self._casefold())
        now = self._clock.now()
        report = await self._cache().report(now - query.hours * 3600.0, query.namespace,
                                            query.project)
        return convert_cache.stats_to_pb(report, now)

    @unary
    @_traced
    async def PurgeCache(self, request: pb.CacheQuery, context: Any) -> pb.PurgeCacheResult:
        """Delete the entries of a namespace and/or project, or (with all) every entry."""
        query = convert_cache.query_from_pb(request, self._casefold())
        namespace, project = convert_cache.purge_scope(query)
        return pb.PurgeCacheResult(deleted=await self._cache().purge(namespace, project))

    def _casefold(self) -> bool:
        return self._service.state.settings.limits.casefold_scope_labels

    def _cache(self) -> CacheService:
        if self._service.cache is None:
            raise FailedPrecondition("the response cache is not configured")
        return self._service.cache


    @unary
    @_traced
    async def Complete(  # type: ignore[override]  # grpc.aio streams via context.write too
        self, request: pb.CompleteRequest, context: Any
    ) -> None:
        """Decide as Route does, then make the call: decision, deltas, attempts, done.

        Written with context.write (not as a generator) so that a client going away cancels
        this coroutine wherever it waits, and closing the events closes the upstream at once.
        """
        if self._complete is None:
            raise FailedPrecondition("Complete: execute mode is not configured")
        started = time.perf_counter()
        req = convert_complete.request_from_pb(request)
        events = self._complete.complete(req, self._observe.trace_ids(),
                                         context.time_remaining())
        done: Done | None = None
        async with contextlib.aclosing(ready_batches(events)) as batches:
            async for batch in batches:
                for event in batch:
                    if isinstance(event, domain.Decision):
                        self._observe.decided(req.task, event, time.perf_counter() - started)
                    elif isinstance(event, Done):
                        done = event
                    await context.write(convert_complete.event_to_pb(event))
        if done is not None and not done.success:
            # After `done`, the status says whether the same call may succeed later.
            raise (Unavailable if done.retryable else FailedPrecondition)(done.error)

