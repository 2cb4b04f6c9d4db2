"""What the admin API serves from: the very objects the gRPC servicer calls, and the settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.trace import Tracer

from routing_sidecar.config import RouterConfig
from routing_sidecar.grpc_api.observe import Observer
from routing_sidecar.ports import AdminStore, AuditLog, Clock
from routing_sidecar.service.admin import Operator, PolicyEditor
from routing_sidecar.service.outcomes import OutcomeService
from routing_sidecar.service.routing import RoutingService


class Store(AuditLog, AdminStore, Protocol):
    """The audit trail with the admin API's queries and operator state."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How the admin port listens and bounds its clients."""

    listen: str
    idle_timeout_s: float = 15.0
    read_timeout_s: float = 10.0
    max_request_bytes: int = 1 << 20
    # POST/DELETE under /api/routing/ need it; None turns those changes off.
    token: str | None = None
    # Not loopback: /route and /outcome need the token too.
    remote: bool = False


@dataclass(frozen=True, slots=True)
class Backend:
    """The running sidecar's services, as the HTTP handlers reach them."""

    routing: RoutingService
    outcomes: OutcomeService
    store: Store
    clock: Clock
    observer: Observer
    policies: PolicyEditor
    operator: Operator
    config: Callable[[], RouterConfig]  # the config routing runs on now
    serving: Callable[[], Awaitable[bool]]  # the gRPC health status, read live
    metrics: Callable[[], bytes]  # Prometheus text; blocking, so run off the loop
    metrics_content_type: str
    tracer: Tracer | None  # None: no spans
