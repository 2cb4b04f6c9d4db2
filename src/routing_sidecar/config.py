"""The YAML configuration: pydantic models, loading, and cross-checks that name the path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from routing_sidecar import calls
from routing_sidecar.config_base import (
    LABEL_KEY_RE,
    MAX_COUNT,
    MAX_TOKENS,
    MAX_USD,
    MAX_USD_PER_MTOK,
    MIN_TTL_S,
    SCOPE_RE,
    Fraction,
    Usd,
    _Strict,
    admin_listen_shape,
    is_loopback_host,
    usd_to_micros,
)
from routing_sidecar.config_checks import cross_check
from routing_sidecar.config_convert import to_settings
from routing_sidecar.config_fleet import FleetConfig
from routing_sidecar.config_providers import ProviderConfig, execution_settings
from routing_sidecar.config_routing import (
    BreakerConfig,
    BudgetConfig,
    CacheConfig,
    DemotionConfig,
    DetectionConfig,
    ExplorationConfig,
    HealthConfig,
    LearningConfig,
    LimitsConfig,
    MatchConfig,
    ModelConfig,
    OutcomesConfig,
    PolicyConfig,
    PriorityRange,
    RetryConfig,
    RuleConfig,
    ShapeConfig,
    TierConfig,
)
from routing_sidecar.config_server import (
    DEFAULT_STORE_PATH,
    AdminConfig,
    LedgerConfig,
    ServerConfig,
    StoreConfig,
    TelemetryConfig,
    TlsConfig,
    is_local_listen,
    masked_dsn,
    remote_admin_problem,
    remote_grpc_problem,
)
from routing_sidecar.errors import ConfigError
from routing_sidecar.settings import SCOPE_LABELS, RouterSettings

# The sections live in config_* modules beside this one; callers import them from here.
__all__ = [
    "DEFAULT_STORE_PATH",
    "LABEL_KEY_RE",
    "MAX_COUNT",
    "MAX_TOKENS",
    "MAX_USD",
    "MAX_USD_PER_MTOK",
    "MIN_TTL_S",
    "RESTART_ONLY",
    "SCOPE_RE",
    "AdminConfig",
    "BreakerConfig",
    "BudgetConfig",
    "CacheConfig",
    "DemotionConfig",
    "DetectionConfig",
    "ExplorationConfig",
    "FleetConfig",
    "Fraction",
    "HealthConfig",
    "LearningConfig",
    "LedgerConfig",
    "LimitsConfig",
    "MatchConfig",
    "ModelConfig",
    "OutcomesConfig",
    "PolicyConfig",
    "PriorityRange",
    "ProviderConfig",
    "RetryConfig",
    "RouterConfig",
    "RuleConfig",
    "ServerConfig",
    "ShapeConfig",
    "StoreConfig",
    "TelemetryConfig",
    "TierConfig",
    "TlsConfig",
    "Usd",
    "admin_listen_shape",
    "config_hash",
    "execution_settings",
    "is_local_listen",
    "is_loopback_host",
    "load_config",
    "masked_dsn",
    "parse_config",
    "remote_admin_problem",
    "remote_grpc_problem",
    "to_settings",
    "usd_to_micros",
    "validate_config",
]


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


# libyaml's parser where PyYAML was built with it: a tenth of the pure-Python parse time of
# the default config, which every start and reload pays. The constructors are the same.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[misc]
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
    problems = list(cross_check(cfg))
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
