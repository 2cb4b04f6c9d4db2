"""Health of models, providers and lanes: decaying windows, EWMAs, circuit breakers, detection.

Pure and deterministic: no I/O and no clock of its own (`now`, epoch seconds, is passed in).
Fed by the attempts of reported outcomes; read on the decision path through `allows` (a
capability filter) and `penalty` (score demotion).

Windows are exponentially decaying counts with time constant `health.window_s`: an attempt
seen `window_s` ago weighs 1/e of a fresh one. A rate (errors / attempts) is unchanged by decay,
while the volume (how much evidence there is) fades, so a model that stopped failing, or stopped
being used, regains its place as its old evidence ages out. Latency and tokens per second are
EWMAs per observation (weight `health.ewma_alpha`) over successful attempts.

Breaker, per model and per provider: CLOSED -> OPEN after `consecutive_failures` failures in a
row (for a provider: spanning at least two of its models, so one broken model does not take out
its siblings) or an error rate at or above `error_rate` once the breaker's window holds
`min_volume` attempts; a RATE_LIMITED attempt with a retry-after opens its model's breaker at
once, at least until then (capped at `max_cooldown_s`). OPEN lasts the cooldown, doubled after
each failed probe up to `max_cooldown_s`; then HALF_OPEN lets one probe through (claimed by
`on_routed`, and given back after `probe_timeout_s` if no outcome arrives); a success closes the
breaker, a failure reopens it. Every failure class counts against the breaker.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime

from routing_sidecar.core.health_types import (
    SCOPE_NAMES,
    BreakerChange,
    BreakerState,
    BreakerStatus,
    Detection,
    HealthStats,
    PerfRow,
    Scope,
)
from routing_sidecar.domain import Attempt, AttemptStatus, ModelSpec
from routing_sidecar.settings import HealthSettings

__all__ = ["BreakerChange", "BreakerState", "BreakerStatus", "Detection", "HealthBook",
           "HealthStats", "PerfRow", "Scope", "clock"]

# Keys come from callers (attempt model names, lane labels): each map is bounded, and past the
# bound a new key is not tracked rather than growing memory without limit.
MAX_KEYS = 1024
OK, TRANSIENT, PERMANENT, TIMEOUT, LIMITED = (
    AttemptStatus.SUCCESS, AttemptStatus.TRANSIENT_ERROR, AttemptStatus.PERMANENT_ERROR,
    AttemptStatus.TIMEOUT, AttemptStatus.RATE_LIMITED,
)


class _Entry:
    """Mutable state of one key; counts decay from `t`."""

    __slots__ = ("bf", "bn", "consec", "fallbacks", "last_seen", "lat", "limited", "n", "name",
                 "ok", "open_until", "permanent", "probe_at", "scope", "state", "streak_mixed",
                 "streak_model", "t", "timeout", "tps", "tps_n", "transient", "trips")

    def __init__(self, t: float, scope: Scope = Scope.MODEL, name: str = "") -> None:
        self.t = t
        self.scope, self.name = scope, name
        self.n = self.ok = self.transient = self.permanent = self.timeout = self.limited = 0.0
        self.fallbacks = self.tps_n = self.bn = self.bf = 0.0
        self.lat: float | None = None
        self.tps: float | None = None
        self.last_seen: float | None = None
        self.state = BreakerStatus.CLOSED
        self.open_until = 0.0
        self.trips = 0
        self.probe_at: float | None = None
        self.consec = 0
        self.streak_model = ""
        self.streak_mixed = False

    def decay_to(self, now: float, window_s: float) -> None:
        """Age every decaying count to `now` (never backwards)."""
        dt = now - self.t
        if dt <= 0.0:
            return
        f = math.exp(-dt / window_s)
        self.n *= f
        self.ok *= f
        self.transient *= f
        self.permanent *= f
        self.timeout *= f
        self.limited *= f
        self.fallbacks *= f
        self.tps_n *= f
        self.bn *= f
        self.bf *= f
        self.t = now

    def volume(self, now: float, window_s: float) -> float:
        """Attempts in the window as of `now`, without mutating."""
        dt = now - self.t
        return self.n * math.exp(-dt / window_s) if dt > 0.0 else self.n


class HealthBook:
    """Health per model, provider and lane; breakers per model and provider."""

    def __init__(self, cfg: HealthSettings) -> None:
        self.settings = cfg
        b, d, dm = cfg.breaker, cfg.detection, cfg.demotion
        self._alpha, self._window = cfg.ewma_alpha, cfg.window_s
        self._consec, self._rate, self._min_volume = (
            b.consecutive_failures, b.error_rate, b.min_volume)
        self._cooldown, self._max_cooldown, self._probe_timeout = (
            b.cooldown_s, b.max_cooldown_s, b.probe_timeout_s)
        self._err_w, self._slow_w, self._evidence, self._max_penalty = (
            dm.error_weight, dm.slowness_weight, dm.evidence, dm.max_penalty)
        self._det = d
        self._maps: dict[Scope, dict[str, _Entry]] = {s: {} for s in Scope}
        self._changes: list[BreakerChange] = []  # opened or closed here, not yet shared
        self._models = self._maps[Scope.MODEL]
        self._providers = self._maps[Scope.PROVIDER]

    # -- feeding ---------------------------------------------------------------------------

    def record(self, attempt: Attempt, now: float, *, lane: str | None = None,
               fell_back: bool = False) -> None:
        """Count one reported attempt for its model, its provider and its lane.

        `fell_back`: the caller moved on to another model after this attempt (it failed and a
        fallback ran); this feeds the fallback rate behind ELEVATED_FALLBACK.
        """
        status = attempt.status
        if status is AttemptStatus.CANCELLED:
            return  # the caller went away: no evidence about the model or its provider
        ok = status is OK
        tps = None
        if ok and attempt.duration_s > 0.0 and attempt.output_tokens > 0:
            tps = attempt.output_tokens / attempt.duration_s
        retry_after = attempt.retry_after_s if status is LIMITED else None
        e = self._entry(Scope.MODEL, attempt.model, now)
        if e is not None:
            self._count(e, attempt, ok, tps, fell_back, now)
            self._judge(e, ok, attempt.model, retry_after, now, provider=False)
        if attempt.provider:
            e = self._entry(Scope.PROVIDER, attempt.provider, now)
            if e is not None:
                self._count(e, attempt, ok, tps, fell_back, now)
                self._judge(e, ok, attempt.model, None, now, provider=True)
        if lane:
            e = self._entry(Scope.LANE, lane, now)
            if e is not None:
                self._count(e, attempt, ok, tps, fell_back, now)

    def record_outcome(self, attempts: Iterable[Attempt], now: float,
                       lane: str | None = None) -> None:
        """Record an outcome's attempts in order.

        A failed attempt fell back when a later attempt of the outcome used another model.
        """
        seq = list(attempts)
        for i, a in enumerate(seq):
            fell_back = a.status is not OK and any(b.model != a.model for b in seq[i + 1:])
            self.record(a, now, lane=lane, fell_back=fell_back)

    def on_routed(self, model: ModelSpec, now: float) -> None:
        """A decision chose `model`: it claims the half-open probe of its breakers, if any."""
        for e in (self._models.get(model.name), self._providers.get(model.provider)):
            if e is not None and self._status(e, now) is BreakerStatus.HALF_OPEN and (
                e.probe_at is None or now >= e.probe_at + self._probe_timeout
            ):
                e.probe_at = now

    # -- the fleet -------------------------------------------------------------------------

    def drain_changes(self) -> list[BreakerChange]:
        """Breakers this sidecar opened or closed since the last call, oldest first."""
        out, self._changes = self._changes, []
        return out

    def apply_remote(self, change: BreakerChange, now: float) -> None:
        """Another sidecar opened or closed a breaker: follow it.

        The sidecar that opened a breaker sends its half-open probe; here the probe counts as
        in flight from the end of the cooldown, so no second sidecar probes unless that one
        has not answered within the probe timeout.
        """
        e = self._entry(Scope(change.scope), change.name, now)
        if e is None:
            return
        if not change.opened:
            e.state, e.trips, e.probe_at, e.bn, e.bf = BreakerStatus.CLOSED, 0, None, 0.0, 0.0
            e.consec, e.streak_model, e.streak_mixed = 0, "", False
            return
        if e.state is BreakerStatus.OPEN and e.open_until >= change.open_until:
            return
        e.state, e.open_until = BreakerStatus.OPEN, change.open_until
        e.trips, e.probe_at = max(e.trips, change.trips), change.open_until
        e.consec, e.streak_model, e.streak_mixed, e.bn, e.bf = 0, "", False, 0.0, 0.0

    # -- decision path ---------------------------------------------------------------------

    def blocked(self, model: ModelSpec, now: float) -> str | None:
        """Why the model may not be routed now (its or its provider's circuit), else None."""
        e = self._models.get(model.name)
        if e is not None and e.state is not BreakerStatus.CLOSED:
            why = self._verdict(e, now, "")
            if why is not None:
                return why
        e = self._providers.get(model.provider)
        if e is not None and e.state is not BreakerStatus.CLOSED:
            return self._verdict(e, now, f" (provider {model.provider})")
        return None

    def penalty(self, model: ModelSpec, now: float) -> float:
        """Score demotion for errors and slowness, scaled by how much evidence backs them.

        error_weight * error rate * n/(n+evidence) + slowness_weight * (1 - observed tokens/s
        over the catalog's) * m/(m+evidence), capped at max_penalty; n and m are the decaying
        volumes, so the demotion fades as a model recovers or its evidence ages.
        """
        e = self._models.get(model.name)
        if e is None or e.n <= 0.0:
            return 0.0
        f = math.exp(-(now - e.t) / self._window) if now > e.t else 1.0
        n = e.n * f
        k = self._evidence
        pen = self._err_w * (1.0 - e.ok / e.n) * n / (n + k)
        if e.tps is not None and e.tps < model.tokens_per_s:
            m = e.tps_n * f
            pen += self._slow_w * (1.0 - e.tps / model.tokens_per_s) * m / (m + k)
        return min(pen, self._max_penalty)

    # -- reading ---------------------------------------------------------------------------

    def breaker(self, key: str, now: float) -> BreakerState:
        """The breaker of 'model:NAME' or 'provider:NAME' (CLOSED when never seen)."""
        scope, _, name = key.partition(":")
        if scope not in (Scope.MODEL, Scope.PROVIDER):
            raise ValueError(f"breaker key {key!r}: expected model:NAME or provider:NAME")
        e = self._maps[Scope(scope)].get(name)
        if e is None:
            return BreakerState(BreakerStatus.CLOSED)
        status = self._status(e, now)
        return BreakerState(
            status,
            e.open_until if status is BreakerStatus.OPEN else None,
            e.consec,
            e.trips,
            status is BreakerStatus.HALF_OPEN and e.probe_at is not None
            and now < e.probe_at + self._probe_timeout,
        )

    def reset_breaker(self, key: str) -> bool:
        """Close the breaker of 'model:NAME' or 'provider:NAME' by hand; False if never seen.

        An operator's override: the failure streak, trip count and probe are forgotten, while
        the decaying health counts (and so demotion and detection) are kept as evidence. In a
        fleet the closing is shared like any other (drain_changes).
        """
        scope, _, name = key.partition(":")
        if scope not in (Scope.MODEL, Scope.PROVIDER):
            raise ValueError(f"breaker key {key!r}: expected model:NAME or provider:NAME")
        e = self._maps[Scope(scope)].get(name)
        if e is None:
            return False
        e.state, e.open_until, e.probe_at, e.trips = BreakerStatus.CLOSED, 0.0, None, 0
        e.consec, e.streak_model, e.streak_mixed, e.bn, e.bf = 0, "", False, 0.0, 0.0
        self._changes.append(BreakerChange(e.scope.value, e.name, False))  # the fleet too
        return True

    def detection(self, now: float, *, providers: Iterable[str] = (),
                  lanes: Iterable[str] = ()) -> dict[str, Detection]:
        """Detection state per 'provider:NAME' and 'lane:NAME'.

        Every key seen is listed, plus the names given (IDLE when never seen).
        """
        out: dict[str, Detection] = {}
        for scope, extra in ((Scope.PROVIDER, providers), (Scope.LANE, lanes)):
            entries = self._maps[scope]
            for name in sorted({*entries, *extra}):
                e = entries.get(name)
                out[f"{scope}:{name}"] = (
                    Detection.IDLE if e is None else self._detect(e, now, scope)
                )
        return out

    def stats(self, now: float) -> list[HealthStats]:
        """Every key's rates, EWMAs, breaker and detection, ordered by scope then name."""
        rows: list[HealthStats] = []
        for scope, entries in self._maps.items():
            for name in sorted(entries):
                e = entries[name]
                n = e.n or 1.0  # rates are unchanged by decay; avoid 0/0 on an empty window
                status = self._status(e, now)
                rows.append(HealthStats(
                    scope, name, e.volume(now, self._window), e.ok / n if e.n else 0.0,
                    e.transient / n, e.permanent / n, e.timeout / n, e.limited / n,
                    e.fallbacks / n, e.lat, e.tps, status,
                    e.open_until if status is BreakerStatus.OPEN else None,
                    None if scope is Scope.MODEL else self._detect(e, now, scope), e.last_seen,
                ))
        return rows

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self) -> list[PerfRow]:
        """Every key's state as plain rows."""
        return [
            PerfRow(
                scope.value, name, e.t, e.n, e.ok, e.transient, e.permanent, e.timeout,
                e.limited, e.fallbacks, e.lat, e.tps, e.tps_n, e.last_seen, e.state.value,
                e.open_until if e.state is not BreakerStatus.CLOSED else None, e.trips,
                e.probe_at, e.consec, e.streak_model, e.streak_mixed, e.bn, e.bf,
            )
            for scope, entries in self._maps.items()
            for name, e in entries.items()
        ]

    def restore(self, rows: Iterable[PerfRow]) -> None:
        """Replace all state with the rows' (unknown scopes are skipped)."""
        for entries in self._maps.values():
            entries.clear()
        for r in rows:
            if r.scope not in SCOPE_NAMES:
                continue
            e = _Entry(r.updated_at, Scope(r.scope), r.name)
            e.n, e.ok, e.transient, e.permanent = r.attempts, r.successes, r.transient, r.permanent
            e.timeout, e.limited, e.fallbacks = r.timeouts, r.rate_limited, r.fallbacks
            e.lat, e.tps, e.tps_n, e.last_seen = r.latency_ewma_s, r.tps_ewma, r.tps_volume, \
                r.last_seen
            e.state = BreakerStatus(r.breaker)
            e.open_until = r.open_until if r.open_until is not None else 0.0
            e.trips, e.probe_at, e.consec = r.trips, r.probe_at, r.consecutive_failures
            e.streak_model, e.streak_mixed = r.streak_model, r.streak_mixed
            e.bn, e.bf = r.breaker_attempts, r.breaker_failures
            self._maps[Scope(r.scope)][r.name] = e

    # -- internals -------------------------------------------------------------------------

    def _entry(self, scope: Scope, name: str, now: float) -> _Entry | None:
        entries = self._maps[scope]
        e = entries.get(name)
        if e is None:
            if len(entries) >= MAX_KEYS:
                return None
            e = entries[name] = _Entry(now, scope, name)
        e.decay_to(now, self._window)
        return e

    def _count(self, e: _Entry, attempt: Attempt, ok: bool, tps: float | None,
               fell_back: bool, now: float) -> None:
        status = attempt.status
        e.n += 1.0
        if ok:
            e.ok += 1.0
            a = self._alpha
            d = attempt.duration_s
            if d > 0.0:
                e.lat = d if e.lat is None else e.lat + a * (d - e.lat)
            if tps is not None:
                e.tps = tps if e.tps is None else e.tps + a * (tps - e.tps)
                e.tps_n += 1.0
        elif status is TRANSIENT:
            e.transient += 1.0
        elif status is PERMANENT:
            e.permanent += 1.0
        elif status is TIMEOUT:
            e.timeout += 1.0
        else:
            e.limited += 1.0
        if fell_back:
            e.fallbacks += 1.0
        if e.last_seen is None or now > e.last_seen:
            e.last_seen = now

    def _status(self, e: _Entry, now: float) -> BreakerStatus:
        """The breaker's status at `now`: an OPEN one past its cooldown reads HALF_OPEN."""
        if e.state is BreakerStatus.OPEN and now >= e.open_until:
            return BreakerStatus.HALF_OPEN
        return e.state

    def _verdict(self, e: _Entry, now: float, suffix: str) -> str | None:
        if now < e.open_until:
            return f"circuit open until {clock(e.open_until)}{suffix}"
        if e.probe_at is not None and now < e.probe_at + self._probe_timeout:
            return f"circuit half-open, probe in flight{suffix}"
        return None

    def _judge(self, e: _Entry, ok: bool, model: str, retry_after: float | None, now: float,
               *, provider: bool) -> None:
        """Move the breaker on one attempt's result."""
        status = self._status(e, now)
        if status is BreakerStatus.OPEN:
            # Attempts started before the trip still land; only a later retry-after extends it.
            until = now + min(retry_after or 0.0, self._max_cooldown)
            if retry_after is not None and retry_after > 0.0 and until > e.open_until:
                e.open_until = until
                self._changes.append(BreakerChange(e.scope.value, e.name, True, until, e.trips))
            return
        e.bn += 1.0
        if ok:
            e.consec, e.streak_model, e.streak_mixed = 0, "", False
            if status is BreakerStatus.HALF_OPEN:
                e.state, e.trips, e.probe_at, e.bn, e.bf = BreakerStatus.CLOSED, 0, None, 0.0, 0.0
                self._changes.append(BreakerChange(e.scope.value, e.name, False))
            return
        e.bf += 1.0
        e.consec += 1
        if e.streak_model and e.streak_model != model:
            e.streak_mixed = True
        elif not e.streak_model:
            e.streak_model = model
        tripped = (
            status is BreakerStatus.HALF_OPEN
            or (e.consec >= self._consec and (e.streak_mixed or not provider))
            or (e.bn >= self._min_volume and e.bf >= self._rate * e.bn)
            or (retry_after is not None and retry_after > 0.0)
        )
        if tripped:
            self._open(e, now, retry_after)

    def _open(self, e: _Entry, now: float, retry_after: float | None) -> None:
        e.trips += 1
        cooldown = min(self._max_cooldown, self._cooldown * 2.0 ** min(e.trips - 1, 30))
        if retry_after is not None and retry_after > cooldown:
            cooldown = min(retry_after, self._max_cooldown)
        e.state, e.open_until, e.probe_at = BreakerStatus.OPEN, now + cooldown, None
        e.consec, e.streak_model, e.streak_mixed, e.bn, e.bf = 0, "", False, 0.0, 0.0
        self._changes.append(BreakerChange(e.scope.value, e.name, True, e.open_until, e.trips))

    def _detect(self, e: _Entry, now: float, scope: Scope) -> Detection:
        d = self._det
        if scope is Scope.PROVIDER and self._status(e, now) is not BreakerStatus.CLOSED:
            return Detection.DEGRADED
        if e.last_seen is None or now - e.last_seen >= d.idle_after_s:
            return Detection.IDLE
        if e.volume(now, self._window) >= d.min_volume:
            if e.n - e.ok >= d.degraded_error_rate * e.n:
                return Detection.DEGRADED
            if e.fallbacks >= d.elevated_fallback_rate * e.n:
                return Detection.ELEVATED_FALLBACK
        return Detection.HEALTHY


def clock(ts: float) -> str:
    """UTC wall-clock time of day, rounded up to the second: '12:03:10Z'."""
    return datetime.fromtimestamp(math.ceil(ts), UTC).strftime("%H:%M:%SZ")
