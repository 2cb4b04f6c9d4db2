"""The Router servicer: thin adapters from protobuf to the routing service and back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from routing_sidecar.errors import InvalidArgument
from routing_sidecar.grpc_api import convert
from routing_sidecar.grpc_api.status import streaming, unary
from routing_sidecar.service.routing import RoutingService
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc


class RouterServicer(pb_grpc.RouterServicer):
    """Implements routing_sidecar.v1.Router over a RoutingService."""

    def __init__(self, service: RoutingService) -> None:
        self._service = service

    @unary
    async def Route(self, request: pb.RouteRequest, context: Any) -> pb.Decision:
        """Decide one task."""
        task = convert.task_from_pb(request)
        decision = await self._service.route(task)
        return convert.decision_to_pb(decision)

    @streaming
    async def RouteStream(
        self, request_iterator: AsyncIterator[pb.RouteRequest], context: Any
    ) -> AsyncIterator[pb.Decision]:
        """Decide a stream of tasks, answering in order."""
        index = 0
        async for request in request_iterator:
            try:
                task = convert.task_from_pb(request)
                decision = await self._service.route(task)
            except InvalidArgument as exc:
                field = f"stream message {index}: {exc.field}"
                raise InvalidArgument(field, _problem(exc)) from None
            yield convert.decision_to_pb(decision)
            index += 1


    async def ReportOutcome(self, request: pb.Outcome, context: Any) -> pb.OutcomeAck:
        """Not served until the store is configured."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "outcome reporting is not enabled")
        raise AssertionError  # pragma: no cover

    async def GetBudgetStatus(
        self, request: pb.BudgetQuery, context: Any
    ) -> pb.BudgetStatusList:
        """Not served until the store is configured."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "budgets are not enabled")
        raise AssertionError  # pragma: no cover

    async def GetRoutingStats(self, request: pb.StatsQuery, context: Any) -> pb.RoutingStats:
        """Not served until the store is configured."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "stats are not enabled")
        raise AssertionError  # pragma: no cover


def _problem(exc: InvalidArgument) -> str:
    return exc.message.removeprefix(f"{exc.field}: ")
