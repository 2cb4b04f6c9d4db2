"""The YAML configuration: pydantic models, loading, and cross-checks that name the path."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from routing_sidecar import domain
from routing_sidecar.errors import ConfigError

Usd = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
SCOPE_RE = re.compile(r"^(global|task|(project|provider|model|policy|worker):[A-Za-z0-9_.\-/*]+)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    """Where the gRPC server listens and how it drains."""

    listen: str = "127.0.0.1:50051"
    grace_period_s: Annotated[float, Field(ge=0, le=300)] = 5.0
    max_request_bytes: Annotated[int, Field(gt=0)] = 1 << 20

    @field_validator("listen")
    @classmethod
    def _listen_shape(cls, v: str) -> str:
        if v.startswith("unix:"):
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected HOST:PORT or unix:///path.sock")
        return v


class StoreConfig(_Strict):
    """The embedded SQLite store."""

    path: str = "var/routing.db"
    retention_days: Annotated[int, Field(ge=1)] = 30


class LedgerConfig(_Strict):
    """Budget ledger settings shared by every budget."""

    reservation_ttl_s: Annotated[float, Field(gt=0)] = 900.0
    timezone: str = "UTC"


def admin_listen_shape(v: str) -> str:
    """HOST:PORT or "" (off); raises ValueError otherwise."""
    host, sep, port = v.rpartition(":")
    if v and (not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535):
        raise ValueError("expected HOST:PORT, or \"\" to turn the admin port off")
    return v


class TelemetryConfig(_Strict):
    """OpenTelemetry traces and metrics; the standard OTEL_* variables fill what is left unset.

    `exporter` unset means: OTEL_TRACES_EXPORTER (otlp | console | none) with
    OTEL_EXPORTER_OTLP_PROTOCOL (grpc | http/protobuf), else none. `endpoint`, `insecure`,
    `sample_ratio`, `service_name` and `metric_export_interval_s` unset leave the SDK to read
    OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_INSECURE, OTEL_TRACES_SAMPLER(_ARG),
    OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES and OTEL_METRIC_EXPORT_INTERVAL. Headers
    (credentials) come only from OTEL_EXPORTER_OTLP_HEADERS, never from this file.
    """

    exporter: Literal["otlp_grpc", "otlp_http", "console", "none"] | None = None
    endpoint: Annotated[str, Field(min_length=1)] | None = None
    insecure: bool | None = None
    sample_ratio: Fraction | None = None
    service_name: Annotated[str, Field(min_length=1)] | None = None
    # The old name of `admin.listen` (the admin port: /metrics, the HTTP API, the dashboard).
    admin_listen: str = "127.0.0.1:9464"
    metric_export_interval_s: Annotated[float, Field(gt=0)] | None = None

    @field_validator("admin_listen")
    @classmethod
    def _admin_shape(cls, v: str) -> str:
        return admin_listen_shape(v)


# -- the admin port (http_api) ------------------------------------------------------------

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1; any other name or address is remote."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def remote_admin_problem(listen: str, token_file: str | None) -> str | None:
    """Why an admin listen address is refused: remote without a token file; None when fine."""
    if not listen or token_file:
        return None
    host = listen.rpartition(":")[0]
    if is_loopback_host(host):
        return None
    return (f"{listen} is not a loopback address; set admin.token_file so that changes made "
            "through the HTTP API need a bearer token")


class AdminConfig(_Strict):
    """The admin HTTP port: /health, /metrics, the HTTP/JSON API and the dashboard."""

    # HOST:PORT, loopback unless token_file is set; "" turns it off, port 0 picks a free one.
    listen: str = "127.0.0.1:9464"
    # A file holding the bearer token that POST/DELETE under /api/routing/ require.
    token_file: Annotated[str, Field(min_length=1)] | None = None
    # An idle connection, or one that has not sent a whole request head, is closed after this.
    idle_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
    # Reading one request body may take at most this long.
    read_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    max_request_bytes: Annotated[int, Field(gt=0, le=64 << 20)] = 1 << 20

    @field_validator("listen")
    @classmethod
    def _listen_shape(cls, v: str) -> str:
        return admin_listen_shape(v)


class ModelConfig(_Strict):
    """One catalog entry as written in YAML; prices in USD per million tokens."""

    provider: Annotated[str, Field(min_length=1)]
    tier: Annotated[int, Field(ge=1, le=3)]
    input_per_mtok: Usd
    output_per_mtok: Usd
    context_window: Annotated[int, Field(gt=0)]
    tokens_per_s: Annotated[float, Field(gt=0)]
    quality: Fraction
    capabilities: list[str] = []
    origin: Literal["hosted", "local"] = "hosted"
    priced_at: str | None = None


class RetryConfig(_Strict):
    """Retry advice handed to callers for one model."""

    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    base_backoff_s: Annotated[float, Field(ge=0)] = 0.2
    max_backoff_s: Annotated[float, Field(ge=0)] = 1.0


class PolicyConfig(_Strict):
    """A named policy: models in priority order and per-task limits."""

    models: Annotated[list[str], Field(min_length=1)]
    objective: Literal["cost_speed", "balanced", "quality"] | None = None
    max_cost_per_task_usd: Annotated[float, Field(gt=0)] | None = None
    max_output_tokens: Annotated[int, Field(gt=0)] | None = None
    fallbacks: Annotated[int, Field(ge=0, le=10)] = 2
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    retry: RetryConfig = RetryConfig()
    critical: bool = False
    quality_floor: Fraction | None = None


class PriorityRange(_Strict):
    """Inclusive priority bounds."""

    min: Annotated[int, Field(ge=0, le=100)] | None = None
    max: Annotated[int, Field(ge=0, le=100)] | None = None


class MatchConfig(_Strict):
    """Task conditions: task_type (exact or glob, one or a list), priority range, labels."""

    task_type: str | list[str] | None = None
    priority: PriorityRange | None = None
    labels: dict[str, str] = {}


class RuleConfig(_Strict):
    """task -> policy; first match wins."""

    match: MatchConfig
    policy: str


class ShapeConfig(_Strict):
    """task shape -> objective, used when neither request nor policy sets one."""

    match: MatchConfig
    objective: Literal["cost_speed", "balanced", "quality"]


class BudgetConfig(_Strict):
    """One budget: a scope, a period and a limit."""

    scope: str
    period: Literal["day", "week", "month", "task"] | None = None
    limit_usd: Annotated[float, Field(gt=0)]
    alert_at: Fraction = 0.8
    on_exceed: Literal["downgrade", "reject"] = "reject"

    @field_validator("scope")
    @classmethod
    def _scope_shape(cls, v: str) -> str:
        if not SCOPE_RE.match(v):
            raise ValueError(
                f"unknown scope {v!r}; expected global, task, or project:|provider:|model:|"
                "policy:|worker: followed by a name"
            )
        return v


class TierConfig(_Strict):
    """Tier reservation: which tiers are kept back and how tasks claim them."""

    reserve_above: Annotated[int, Field(ge=1, le=3)] = 1
    ev_percentile: Annotated[float, Field(gt=0, lt=100)] = 90.0
    priority_override: Annotated[int, Field(ge=0, le=100)] = 95
    ev_window: Annotated[int, Field(ge=1)] = 1000
    ev_min_samples: Annotated[int, Field(ge=1)] = 20


class BreakerConfig(_Strict):
    """When a model's or provider's circuit opens and how long it stays open."""

    consecutive_failures: Annotated[int, Field(ge=1)] = 5
    error_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    min_volume: Annotated[float, Field(ge=1)] = 10.0
    cooldown_s: Annotated[float, Field(gt=0)] = 30.0
    max_cooldown_s: Annotated[float, Field(gt=0)] = 300.0
    probe_timeout_s: Annotated[float, Field(gt=0)] = 60.0


class DetectionConfig(_Strict):
    """Thresholds of the per-provider and per-lane detection states."""

    elevated_fallback_rate: Annotated[float, Field(gt=0, le=1)] = 0.1
    degraded_error_rate: Annotated[float, Field(gt=0, le=1)] = 0.25
    idle_after_s: Annotated[float, Field(gt=0)] = 900.0
    min_volume: Annotated[float, Field(ge=1)] = 5.0


class DemotionConfig(_Strict):
    """How much slow or failing models lose in scoring, scaled by how much evidence there is."""

    error_weight: Annotated[float, Field(ge=0)] = 0.5
    slowness_weight: Annotated[float, Field(ge=0)] = 0.2
    evidence: Annotated[float, Field(gt=0)] = 10.0
    max_penalty: Annotated[float, Field(ge=0, le=1)] = 0.5


class HealthConfig(_Strict):
    """Per-model and per-provider health: EWMAs, decaying windows, breakers, detection."""

    ewma_alpha: Annotated[float, Field(gt=0, le=1)] = 0.2
    window_s: Annotated[float, Field(gt=0)] = 300.0
    breaker: BreakerConfig = BreakerConfig()
    detection: DetectionConfig = DetectionConfig()
    demotion: DemotionConfig = DemotionConfig()


class ExplorationConfig(_Strict):
    """Bounded exploration of models not yet proven for a task type."""

    enabled: bool = True
    max_share: Fraction = 0.1
    min_samples_to_prove: Annotated[float, Field(ge=0)] = 5.0


class LearningConfig(_Strict):
    """Learned quality per (task type, model): prior, forgetting, confidence, exploration."""

    prior_strength: Annotated[float, Field(ge=0)] = 20.0
    forget: Annotated[float, Field(gt=0, le=1)] = 0.995
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.8
    max_task_types: Annotated[int, Field(ge=1)] = 4096
    exploration: ExplorationConfig = ExplorationConfig()


class RouterConfig(_Strict):
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    ledger: LedgerConfig = LedgerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    admin: AdminConfig = AdminConfig()
    models: Annotated[dict[str, ModelConfig], Field(min_length=1)]
    policies: Annotated[dict[str, PolicyConfig], Field(min_length=1)]
    rules: list[RuleConfig] = []
    task_shapes: list[ShapeConfig] = []
    default_policy: str
    budgets: list[BudgetConfig] = []
    tiers: TierConfig = TierConfig()
    health: HealthConfig = HealthConfig()
    learning: LearningConfig = LearningConfig()
    critical_lanes: list[str] = []

    def admin_listen(self) -> str:
        """The admin port: `admin.listen`, else its old name `telemetry.admin_listen`."""
        if "listen" in self.admin.model_fields_set:
            return self.admin.listen
        return self.telemetry.admin_listen

    def model_specs(self) -> tuple[domain.ModelSpec, ...]:
        """The catalog as domain types, prices in micro-USD."""
        return tuple(_model_spec(name, m) for name, m in self.models.items())

    def policy_specs(self) -> tuple[domain.Policy, ...]:
        """Policies as domain types."""
        return tuple(_policy(name, p) for name, p in self.policies.items())

    def rule_specs(self) -> tuple[domain.Rule, ...]:
        """Rules as domain types, in file order."""
        return tuple(domain.Rule(_match(r.match), r.policy) for r in self.rules)

    def shape_specs(self) -> tuple[domain.ShapeRule, ...]:
        """Task-shape rules as domain types, in file order."""
        return tuple(
            domain.ShapeRule(_match(s.match), domain.Objective(s.objective))
            for s in self.task_shapes
        )

    def critical_lane_set(self) -> frozenset[str]:
        """Lanes (the `lane` label) on which only models proven above the floor are used."""
        return frozenset(self.critical_lanes)

    def tier_rules(self) -> domain.TierRules:
        """Tier reservation settings as a domain type."""
        t = self.tiers
        return domain.TierRules(
            t.reserve_above, t.ev_percentile, t.priority_override, t.ev_window, t.ev_min_samples
        )


def usd_to_micros(usd: float) -> int:
    """USD as exact integer micro-USD."""
    return round(usd * domain.MICROS_PER_USD)


def _model_spec(name: str, m: ModelConfig) -> domain.ModelSpec:
    return domain.ModelSpec(
        name=name,
        provider=m.provider,
        tier=m.tier,
        input_micros_per_mtok=usd_to_micros(m.input_per_mtok),
        output_micros_per_mtok=usd_to_micros(m.output_per_mtok),
        context_window=m.context_window,
        tokens_per_s=m.tokens_per_s,
        quality=m.quality,
        capabilities=frozenset(m.capabilities),
        origin=m.origin,
    )


def _policy(name: str, p: PolicyConfig) -> domain.Policy:
    return domain.Policy(
        name=name,
        models=tuple(p.models),
        objective=domain.Objective(p.objective) if p.objective else None,
        max_cost_per_task_micros=(
            usd_to_micros(p.max_cost_per_task_usd) if p.max_cost_per_task_usd else None
        ),
        max_output_tokens=p.max_output_tokens,
        fallbacks=p.fallbacks,
        temperature=p.temperature,
        retry=domain.RetryPolicy(
            p.retry.max_retries, p.retry.base_backoff_s, p.retry.max_backoff_s
        ),
        critical=p.critical,
        quality_floor=p.quality_floor,
    )


def _match(m: MatchConfig) -> domain.Match:
    types = (m.task_type,) if isinstance(m.task_type, str) else tuple(m.task_type or ())
    return domain.Match(
        task_types=types,
        priority_min=m.priority.min if m.priority else None,
        priority_max=m.priority.max if m.priority else None,
        labels=dict(m.labels),
    )


def _cross_check(cfg: RouterConfig) -> Iterator[str]:
    """Yield every inconsistency between sections, each prefixed by its path."""
    providers = {m.provider for m in cfg.models.values()}
    for pname, pol in cfg.policies.items():
        seen: set[str] = set()
        for i, model in enumerate(pol.models):
            if model not in cfg.models:
                yield f"policies.{pname}.models[{i}]: unknown model {model!r}"
            if model in seen:
                yield f"policies.{pname}.models[{i}]: duplicate model {model!r}"
            seen.add(model)
    for i, rule in enumerate(cfg.rules):
        if rule.policy not in cfg.policies:
            yield f"rules[{i}].policy: unknown policy {rule.policy!r}"
    for key, matches in (("rules", [r.match for r in cfg.rules]),
                         ("task_shapes", [s.match for s in cfg.task_shapes])):
        for i, match in enumerate(matches):
            p = match.priority
            if p and p.min is not None and p.max is not None and p.min > p.max:
                yield f"{key}[{i}].match.priority: min {p.min} is above max {p.max}"
    if cfg.default_policy not in cfg.policies:
        yield f"default_policy: unknown policy {cfg.default_policy!r}"
    yield from _check_budgets(cfg, providers)
    yield from _check_admin(cfg)
    breaker = cfg.health.breaker
    if breaker.cooldown_s > breaker.max_cooldown_s:
        yield (f"health.breaker.cooldown_s: {breaker.cooldown_s:g} is above max_cooldown_s "
               f"{breaker.max_cooldown_s:g}")
    for name, m in cfg.models.items():
        if m.output_per_mtok == 0 and m.input_per_mtok == 0 and m.origin == "hosted":
            yield f"models.{name}: a hosted model needs a price (origin: local for free models)"


def _check_budgets(cfg: RouterConfig, providers: set[str]) -> Iterator[str]:
    known = {"model": set(cfg.models), "provider": providers, "policy": set(cfg.policies)}
    seen: set[tuple[str, str]] = set()
    for i, b in enumerate(cfg.budgets):
        kind, _, name = b.scope.partition(":")
        if kind in known and "*" not in name and name not in known[kind]:
            yield f"budgets[{i}].scope: unknown {kind} {name!r}"
        period = b.period or ("task" if kind == "task" else "month")
        if (kind == "task") != (period == "task"):
            yield f"budgets[{i}].period: period 'task' goes with scope 'task' and only with it"
        if (b.scope, period) in seen:
            yield f"budgets[{i}]: duplicate budget for {b.scope}/{period}"
        seen.add((b.scope, period))


def _check_admin(cfg: RouterConfig) -> Iterator[str]:
    """`admin.listen` and its old name agree; a remote admin port has a token."""
    new = "listen" in cfg.admin.model_fields_set
    old = "admin_listen" in cfg.telemetry.model_fields_set
    if new and old and cfg.admin.listen != cfg.telemetry.admin_listen:
        yield (f"admin.listen: {cfg.admin.listen!r} differs from telemetry.admin_listen "
               f"{cfg.telemetry.admin_listen!r} (its old name); set only admin.listen")
        return
    problem = remote_admin_problem(cfg.admin_listen(), cfg.admin.token_file)
    if problem:
        yield f"{'telemetry.admin_listen' if old and not new else 'admin.listen'}: {problem}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _loc_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(text: str, source: str = "<config>") -> RouterConfig:
    """Parse and validate YAML text; raise ConfigError listing every problem."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"YAML: {exc}".replace("\n", " ")]) from None
    return validate_config(raw, source)


def validate_config(raw: object, source: str = "<config>") -> RouterConfig:
    """Validate decoded YAML (or JSON) data as a config; raise ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): expected a mapping"])
    try:
        cfg = RouterConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{_loc_path(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(source, problems) from None
    problems = list(_cross_check(cfg))
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: str | Path) -> RouterConfig:
    """Read, parse and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read file: {exc.strerror}"]) from None
    return parse_config(text, str(p))


def config_hash(cfg: RouterConfig) -> str:
    """Stable hash of a validated config, for recording which version decided."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]
