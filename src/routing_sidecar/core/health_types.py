"""Health vocabulary: scopes, breaker and detection states, rows for stats and persistence."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from routing_sidecar.quick_init import quick_init


class Scope(StrEnum):
    """What a health key describes."""

    MODEL = "model"
    PROVIDER = "provider"
    LANE = "lane"


SCOPE_NAMES = frozenset(s.value for s in Scope)


class BreakerStatus(StrEnum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Detection(StrEnum):
    """Detection state of a provider or a lane."""

    HEALTHY = "healthy"
    ELEVATED_FALLBACK = "elevated_fallback"
    DEGRADED = "degraded"
    IDLE = "idle"


@dataclass(frozen=True, slots=True)
class BreakerChange:
    """A breaker opened (until `open_until`) or closed here, for the rest of the fleet to know."""

    scope: str  # "model" or "provider"
    name: str
    opened: bool
    open_until: float = 0.0
    trips: int = 0


@quick_init
@dataclass(frozen=True, slots=True)
class BreakerState:
    """A breaker as seen at one instant."""

    status: BreakerStatus
    open_until: float | None = None
    consecutive_failures: int = 0
    trips: int = 0
    probe_in_flight: bool = False


@dataclass(frozen=True, slots=True)
class HealthStats:
    """One row of the stats matrix (RoutingStats, CLI): rates over the decaying window."""

    scope: Scope
    name: str
    volume: float
    success_rate: float
    transient_rate: float
    permanent_rate: float
    timeout_rate: float
    rate_limited_rate: float
    fallback_rate: float
    latency_ewma_s: float | None
    tokens_per_s: float | None
    breaker: BreakerStatus
    open_until: float | None
    detection: Detection | None
    last_seen: float | None


@dataclass(frozen=True, slots=True)
class PerfRow:
    """Everything one key holds, as plain numbers and strings, for table model_performance.

    Counts are decaying sums as of `updated_at`; `restore(snapshot())` gives back exactly the
    same state.
    """

    scope: str
    name: str
    updated_at: float
    attempts: float = 0.0
    successes: float = 0.0
    transient: float = 0.0
    permanent: float = 0.0
    timeouts: float = 0.0
    rate_limited: float = 0.0
    fallbacks: float = 0.0
    latency_ewma_s: float | None = None
    tps_ewma: float | None = None
    tps_volume: float = 0.0
    last_seen: float | None = None
    breaker: str = BreakerStatus.CLOSED.value
    open_until: float | None = None
    trips: int = 0
    probe_at: float | None = None
    consecutive_failures: int = 0
    streak_model: str = ""
    streak_mixed: bool = False
    breaker_attempts: float = 0.0
    breaker_failures: float = 0.0
