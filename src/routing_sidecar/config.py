"""The YAML configuration: pydantic models, loading, and cross-checks that name the path."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from routing_sidecar import calls, domain
from routing_sidecar.config_fleet import FleetConfig
from routing_sidecar.errors import ConfigError
from routing_sidecar.settings import (
    SCOPE_LABELS,
    BreakerSettings,
    CacheSettings,
    DemotionSettings,
    DetectionSettings,
    ExplorationSettings,
    HealthSettings,
    LearningSettings,
    LedgerSettings,
    LimitSettings,
    OutcomeLimits,
    RouterSettings,
)

Usd = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
# Matched whole (fullmatch): with `$`, "project:alpha\n" would pass.
SCOPE_RE = re.compile(r"global|task|(project|provider|model|policy|worker):[A-Za-z0-9_.\-/*]+")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9_.:/@+\-]{1,64}")


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


DEFAULT_STORE_PATH = "var/routing.db"
_PG_SCHEMES = ("postgresql", "postgres")
_PG_ONLY = ("pool_size", "connect_timeout_s", "command_timeout_s")


def masked_dsn(url: str) -> str:
    """The DSN with its password (in the netloc or a password= parameter) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = "&".join(
        f"{k}=***" if k == "password" else f"{k}={v}" for k, v in parse_qsl(parts.query)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class StoreConfig(_Strict):
    """Where the audit trail lives: a SQLite file (`path`) or one PostgreSQL database (`url`).

    SQLite is the default; a fleet shares one PostgreSQL database. The URL's password never
    leaves this object unmasked (not in dumps, reprs or errors); it may also come from
    $PGPASSWORD or a passfile, which libpq and asyncpg read.
    """

    # The input may hold the DSN's password: validation errors never echo it.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    path: Annotated[str, Field(min_length=1)] | None = None
    url: str | None = Field(default=None, repr=False)
    retention_days: Annotated[int, Field(ge=1)] = 30
    # PostgreSQL only: one pooled connection writes, the others read.
    pool_size: Annotated[int, Field(ge=2, le=100)] = 4
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    command_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

    @model_validator(mode="before")
    @classmethod
    def _default_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("path") is None and data.get("url") is None:
            return {**data, "path": DEFAULT_STORE_PATH}
        return data

    @field_validator("url")
    @classmethod
    def _dsn_shape(cls, v: str | None) -> str | None:
        # Messages here never quote the value: it may hold the password.
        if v is None:
            return v
        try:
            parts = urlsplit(v)
            _ = parts.port
        except ValueError:
            raise ValueError("not a valid postgresql:// URL (bad host or port)") from None
        if parts.scheme not in _PG_SCHEMES:
            raise ValueError("expected a postgresql:// or postgres:// URL")
        return v

    @model_validator(mode="after")
    def _one_backend(self) -> StoreConfig:
        if self.path is not None and self.url is not None:
            raise ValueError("give store.path (SQLite) or store.url (PostgreSQL), not both")
        if self.url is None:
            extra = [f"store.{k}" for k in _PG_ONLY if k in self.model_fields_set]
            if extra:
                raise ValueError(f"only a PostgreSQL store (store.url) takes {', '.join(extra)}")
        return self

    @field_serializer("url")
    def _mask(self, v: str | None) -> str | None:
        # Dumps feed the config hash and the stored config versions: no password there.
        return None if v is None else masked_dsn(v)


class LedgerConfig(_Strict):
    """Budget ledger settings shared by every budget."""

    reservation_ttl_s: Annotated[float, Field(gt=0)] = 900.0
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as UTC or "
                             "Europe/Paris)") from None
        return v


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
    upstream_model: Annotated[str, Field(min_length=1)] | None = None  # id sent to the provider


# --- providers (execute mode) --------------------------------------------------------------

Seconds = Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Credentials come from api_key_env / api_key_file only, never from this file's headers.
SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "cookie",
})


class ProviderConfig(_Strict):
    """How to reach one provider named by `models.<m>.provider`.

    The key is read from `api_key_env` or `api_key_file` (a path, relative to the working
    directory) when the sidecar starts; one that cannot be read leaves the provider without
    credentials (skipped in execute mode). A loopback endpoint (Ollama, vLLM, LM Studio) and
    `kind: fake` need no key; a remote endpoint that takes none says `api_key: none`.
    """

    kind: Literal["openai", "anthropic", "fake"]
    base_url: Annotated[str, Field(min_length=1)] | None = None
    api_key_env: str | None = None
    api_key_file: Annotated[str, Field(min_length=1)] | None = None
    api_key: Literal["none"] | None = None
    headers: dict[str, str] = {}
    timeout_s: Seconds = 120.0  # the whole attempt
    connect_timeout_s: Seconds = 5.0
    first_token_timeout_s: Seconds = 30.0  # request sent to first content event
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 20


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base_url(path: str, url: str) -> Iterator[str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        yield f"{path}: expected an http:// or https:// URL with a host, got {url!r}"
    elif parts.username is not None or parts.password is not None:
        yield f"{path}: credentials do not belong in the URL (use api_key_env or api_key_file)"
    elif parts.query or parts.fragment:
        yield f"{path}: a base URL takes no query or fragment"


def _check_provider(name: str, p: ProviderConfig) -> Iterator[str]:
    path = f"providers.{name}"
    if p.kind == "fake":
        if p.base_url is not None:
            yield f"{path}.base_url: kind fake runs in process and takes no base_url"
    elif p.base_url is None:
        yield f"{path}.base_url: required for kind {p.kind}"
    else:
        yield from _check_base_url(f"{path}.base_url", p.base_url)
    sources = [k for k in ("api_key_env", "api_key_file", "api_key") if getattr(p, k)]
    if len(sources) > 1:
        yield f"{path}: give at most one of api_key_env, api_key_file, api_key (got {sources})"
    if p.api_key_env is not None and not ENV_NAME_RE.match(p.api_key_env):
        yield f"{path}.api_key_env: {p.api_key_env!r} is not an environment variable name"
    host = urlsplit(p.base_url).hostname if p.base_url else None
    if p.kind != "fake" and not sources and host and not _is_loopback(host):
        yield (f"{path}: a remote endpoint needs api_key_env or api_key_file "
               "(or api_key: none if it takes no key)")
    for header, value in p.headers.items():
        if not HEADER_NAME_RE.match(header):
            yield f"{path}.headers.{header}: not a valid header name"
        elif header.lower() in SECRET_HEADERS:
            yield (f"{path}.headers.{header}: credentials come from api_key_env or "
                   "api_key_file, never from the config file")
        elif "\r" in value or "\n" in value:
            yield f"{path}.headers.{header}: a header value cannot contain a line break"
    for key in ("connect_timeout_s", "first_token_timeout_s"):
        if getattr(p, key) > p.timeout_s:
            yield f"{path}.{key}: {getattr(p, key):g} is above timeout_s {p.timeout_s:g}"


def _check_providers(cfg: RouterConfig) -> Iterator[str]:
    """Provider entries, and upstream model ids that no provider entry would ever send."""
    for name, p in cfg.providers.items():
        yield from _check_provider(name, p)
    for name, m in cfg.models.items():
        if m.upstream_model is not None and m.provider not in cfg.providers:
            yield (f"models.{name}.upstream_model: provider {m.provider!r} has no entry under "
                   "providers, so nothing would send it")


def _provider_settings(name: str, p: ProviderConfig) -> calls.ProviderSettings:
    host = urlsplit(p.base_url).hostname if p.base_url else None
    needs_key = p.kind != "fake" and p.api_key is None and not (
        p.api_key_env is None and p.api_key_file is None and host and _is_loopback(host)
    )
    return calls.ProviderSettings(
        name=name, kind=calls.ProviderKind(p.kind), base_url=p.base_url or "",
        api_key_env=p.api_key_env, api_key_file=p.api_key_file, key_required=bool(needs_key),
        headers=dict(p.headers), timeout_s=p.timeout_s, connect_timeout_s=p.connect_timeout_s,
        first_token_timeout_s=p.first_token_timeout_s, max_connections=p.max_connections,
    )


def execution_settings(cfg: RouterConfig) -> calls.ExecutionSettings:
    """Providers and upstream model ids as plain frozen settings (nothing below sees pydantic)."""
    return calls.ExecutionSettings(
        providers={name: _provider_settings(name, p) for name, p in cfg.providers.items()},
        upstream_models={name: m.upstream_model or name for name, m in cfg.models.items()},
    )


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
    # Execute mode: continue a stream cut after tokens on the next model (given the partial
    # answer), and start the first fallback beside a chosen model silent for this long.
    resume_on_stream_failure: bool = False
    hedge_after_ms: Annotated[int, Field(ge=1, le=600_000)] | None = None


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
        if not SCOPE_RE.fullmatch(v):
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
    pool_strength: Annotated[float, Field(ge=0)] = 8.0
    forget: Annotated[float, Field(gt=0, le=1)] = 0.995
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.8
    max_task_types: Annotated[int, Field(ge=1)] = 4096
    exploration: ExplorationConfig = ExplorationConfig()


class OutcomesConfig(_Strict):
    """How far a reported outcome may go before it is refused (README: outcome checks)."""

    max_attempts: Annotated[int, Field(ge=1, le=64)] = 16
    cost_tolerance: Annotated[float, Field(ge=1, le=100, allow_inf_nan=False)] = 1.5
    cost_slack_usd: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.01
    clock_skew_s: Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)] = 300.0

    def limits(self) -> OutcomeLimits:
        """These settings as the core's OutcomeLimits."""
        return OutcomeLimits(self.max_attempts, self.cost_tolerance,
                             usd_to_micros(self.cost_slack_usd), self.clock_skew_s)


class CacheConfig(_Strict):
    """The response cache (README: Response cache).

    `backend: sqlite` keeps entries in the store's file (in `path` when the store is
    PostgreSQL); `backend: redis` shares them between the sidecars of a fleet, on the fleet's
    Redis (`fleet.redis_url`, under `fleet.key_prefix`).
    """

    enabled: bool = True
    backend: Literal["sqlite", "redis"] = "sqlite"
    ttl_s: Annotated[float, Field(gt=0, le=366 * 86_400, allow_inf_nan=False)] = 86_400.0
    max_entries: Annotated[int, Field(ge=1, le=100_000_000)] = 100_000
    max_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024 * 1024
    max_value_bytes: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] = 256 * 1024
    partition_labels: list[str] = ["project"]
    deterministic_only: bool = True
    sweep_interval_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 10.0
    # The cache's own SQLite file, used only when the audit trail is in PostgreSQL (store.url).
    path: Annotated[str, Field(min_length=1)] = "var/cache.db"

    @field_validator("partition_labels")
    @classmethod
    def _label_names(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            if not LABEL_KEY_RE.fullmatch(name):
                raise ValueError(f"[{i}]: {name!r} is not a label key")
        if len(set(v)) != len(v):
            raise ValueError("a label is listed twice")
        return v

    def settings(self) -> CacheSettings:
        """These settings as the services' CacheSettings."""
        return CacheSettings(
            self.enabled, self.ttl_s, self.max_entries, self.max_bytes, self.max_value_bytes,
            tuple(self.partition_labels), self.deterministic_only, self.sweep_interval_s,
        )


def _check_cache(cfg: RouterConfig) -> Iterator[str]:
    c = cfg.cache
    if c.max_value_bytes > c.max_bytes:
        yield (f"cache.max_value_bytes: {c.max_value_bytes} is above max_bytes {c.max_bytes}, "
               "so such an entry could never be kept")
    if c.backend == "redis" and not cfg.fleet.enabled:
        yield ("cache.backend: redis shares the fleet's Redis; set fleet.redis_url or "
               "fleet.redis_url_env")


class LimitsConfig(_Strict):
    """Caps on distinct label values (budget scopes, health lanes, metric series) and scope case.

    A request bringing a value beyond its label's cap is refused (RESOURCE_EXHAUSTED); values
    already known keep working. With casefold_scope_labels, `project` and `worker` values and
    the project:/worker: budget scopes of this file are compared case-folded.
    """

    max_projects: Annotated[int, Field(ge=1)] = 1000
    max_workers: Annotated[int, Field(ge=1)] = 1000
    max_lanes: Annotated[int, Field(ge=1)] = 100
    max_label_values: Annotated[int, Field(ge=1)] = 1000  # for each key of capped_labels
    capped_labels: list[str] = ["layer"]
    casefold_scope_labels: bool = True

    @field_validator("capped_labels")
    @classmethod
    def _label_keys(cls, v: list[str]) -> list[str]:
        for key in v:
            if not LABEL_KEY_RE.fullmatch(key):
                raise ValueError(f"{key!r} is not a label key (1..64 of A-Z a-z 0-9 _ . : / @ + -)")
        return v

    def settings(self) -> LimitSettings:
        """Label key -> cap (the named caps beat the generic one), and the folding switch."""
        caps = dict.fromkeys(self.capped_labels, self.max_label_values)
        caps.update(project=self.max_projects, worker=self.max_workers, lane=self.max_lanes)
        return LimitSettings(MappingProxyType(caps), self.casefold_scope_labels)

    def scope_name(self, scope: str) -> str:
        """A project:/worker: scope (or pattern) as requests' normalised labels will name it."""
        kind, sep, name = scope.partition(":")
        if sep and kind in SCOPE_LABELS and self.casefold_scope_labels:
            return f"{kind}:{name.lower()}"
        return scope


class RouterConfig(_Strict):
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    ledger: LedgerConfig = LedgerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    admin: AdminConfig = AdminConfig()
    limits: LimitsConfig = LimitsConfig()  # before rules and budgets: their checks read it
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
    outcomes: OutcomesConfig = OutcomesConfig()
    fleet: FleetConfig = FleetConfig()
    providers: dict[str, ProviderConfig] = {}  # execute mode: how to reach each provider
    cache: CacheConfig = CacheConfig()

    @field_validator("budgets")
    @classmethod
    def _fold_scopes(cls, v: list[BudgetConfig], info: ValidationInfo) -> list[BudgetConfig]:
        limits = info.data.get("limits")
        if not isinstance(limits, LimitsConfig):
            return v  # limits itself is invalid and reported
        return [b.model_copy(update={"scope": limits.scope_name(b.scope)}) for b in v]

    @field_validator("rules", "task_shapes")
    @classmethod
    def _fold_match_labels(cls, v: list[Any], info: ValidationInfo) -> list[Any]:
        limits = info.data.get("limits")
        if not isinstance(limits, LimitsConfig) or not limits.casefold_scope_labels:
            return v
        out = []
        for item in v:
            labels = {k: val.strip().lower() if k in SCOPE_LABELS else val
                      for k, val in item.match.labels.items()}
            match = item.match.model_copy(update={"labels": labels})
            out.append(item.model_copy(update={"match": match}))
        return out

    def admin_listen(self) -> str:
        """The admin port: `admin.listen`, else its old name `telemetry.admin_listen`."""
        if "listen" in self.admin.model_fields_set:
            return self.admin.listen
        return self.telemetry.admin_listen

    def execution_settings(self) -> calls.ExecutionSettings:
        """Providers and upstream model ids for execute mode, as domain settings."""
        return execution_settings(self)

    def settings(self) -> RouterSettings:
        """Everything routing, budgets and learning run on, as frozen domain objects."""
        return to_settings(self)


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
        resume_on_stream_failure=p.resume_on_stream_failure,
        hedge_after_ms=p.hedge_after_ms,
    )


def _match(m: MatchConfig) -> domain.Match:
    types = (m.task_type,) if isinstance(m.task_type, str) else tuple(m.task_type or ())
    return domain.Match(
        task_types=types,
        priority_min=m.priority.min if m.priority else None,
        priority_max=m.priority.max if m.priority else None,
        labels=dict(m.labels),
    )


def _budget_rules(cfg: RouterConfig) -> tuple[domain.BudgetRule, ...]:
    """The configured budgets as rules, in file order, limits in micro-USD."""
    out = []
    for b in cfg.budgets:
        default = domain.BudgetPeriod.TASK if b.scope == "task" else domain.BudgetPeriod.MONTH
        period = domain.BudgetPeriod(b.period) if b.period else default
        out.append(domain.BudgetRule(b.scope, period, usd_to_micros(b.limit_usd), b.alert_at,
                                     domain.OnExceed(b.on_exceed)))
    return tuple(out)


def _health(h: HealthConfig) -> HealthSettings:
    return HealthSettings(
        h.ewma_alpha, h.window_s, BreakerSettings(**h.breaker.model_dump()),
        DetectionSettings(**h.detection.model_dump()), DemotionSettings(**h.demotion.model_dump()),
    )


def _learning(lc: LearningConfig) -> LearningSettings:
    return LearningSettings(
        lc.prior_strength, lc.pool_strength, lc.forget, lc.confidence, lc.max_task_types,
        ExplorationSettings(**lc.exploration.model_dump()),
    )


def to_settings(cfg: RouterConfig) -> RouterSettings:
    """Convert a validated config into the frozen settings the core and services use."""
    t = cfg.tiers
    return RouterSettings(
        models=MappingProxyType({n: _model_spec(n, m) for n, m in cfg.models.items()}),
        policies=MappingProxyType({n: _policy(n, p) for n, p in cfg.policies.items()}),
        rules=tuple(domain.Rule(_match(r.match), r.policy) for r in cfg.rules),
        shapes=tuple(domain.ShapeRule(_match(s.match), domain.Objective(s.objective))
                     for s in cfg.task_shapes),
        tiers=domain.TierRules(t.reserve_above, t.ev_percentile, t.priority_override,
                               t.ev_window, t.ev_min_samples),
        default_policy=cfg.default_policy,
        budgets=_budget_rules(cfg),
        health=_health(cfg.health),
        learning=_learning(cfg.learning),
        ledger=LedgerSettings(cfg.ledger.reservation_ttl_s, cfg.ledger.timezone),
        critical_lanes=frozenset(cfg.critical_lanes),
        outcomes=cfg.outcomes.limits(),
        cache=cfg.cache.settings(),
        limits=cfg.limits.settings(),
    )


# What a reload cannot change in a running sidecar: it keeps these until restarted.
RESTART_ONLY: Mapping[str, Callable[[RouterConfig], object]] = MappingProxyType({
    "server": lambda c: c.server,
    "store": lambda c: c.store,
    "telemetry": lambda c: c.telemetry,
    "admin": lambda c: (c.admin_listen(), c.admin),
    "ledger.timezone": lambda c: c.ledger.timezone,
    "fleet": lambda c: c.fleet,
    "cache.backend": lambda c: (c.cache.backend, c.cache.path),
})


def _cross_check(cfg: RouterConfig) -> Iterator[str]:
    """Yield every inconsistency between sections, each prefixed by its path."""
    if cfg.fleet.redis_url is not None and cfg.fleet.redis_url_env is not None:
        yield "fleet: give redis_url or redis_url_env, not both"
    providers = {m.provider for m in cfg.models.values()}
    for pname, pol in cfg.policies.items():
        seen: set[str] = set()
        for i, model in enumerate(pol.models):
            if model not in cfg.models:
                yield f"policies.{pname}.models[{i}]: unknown model {model!r}"
            if model in seen:
                yield f"policies.{pname}.models[{i}]: duplicate model {model!r}"
            seen.add(model)
        if pol.hedge_after_ms is not None and pol.fallbacks == 0:
            yield (f"policies.{pname}.hedge_after_ms: a hedge starts the first fallback, and "
                   "fallbacks is 0")
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
    yield from _check_providers(cfg)
    yield from _check_admin(cfg)
    yield from _check_cache(cfg)
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
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), [f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                                   f"offset {exc.start})"]) from None
    return parse_config(text, str(p))


def config_hash(cfg: RouterConfig) -> str:
    """Stable hash of a validated config, for recording which version decided."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]
