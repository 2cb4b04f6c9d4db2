"""The `fleet:` section: sidecars sharing budgets, breakers and learned quality through Redis."""

from __future__ import annotations

import os
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from routing_sidecar.config_base import url_with_scheme

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def masked_redis_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))


class FleetConfig(BaseModel):
    """Redis for the whole fleet: one budget, one memory; see README "Fleet mode"."""

    # The URL may hold a password: validation errors never echo the input.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    # redis://[user:password@]host:port/db or rediss:// (TLS); or the name of an environment
    # variable holding it, so the password stays out of the file.
    redis_url: str | None = Field(default=None, repr=False)
    redis_url_env: Annotated[str, Field(min_length=1)] | None = None
    key_prefix: Annotated[str, Field(min_length=1, max_length=64,
                                     pattern=r"^[A-Za-z0-9_.:\-]+\z")] = "routing:"
    # Redis unreachable: refuse every task that has a budget, or let each sidecar spend at most
    # local_share of each limit on its own until Redis answers again.
    on_redis_down: Literal["reject", "local"] = "reject"
    local_share: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.05
    # Report NOT_SERVING on the health protocol while Redis cannot be reached.
    unhealthy_without_redis: bool = False
    # Outcomes Redis has not seen yet wait here, on local disk, until it answers again.
    outbox_path: Annotated[str, Field(min_length=1)] = "var/outbox.db"
    # How often budget copies are refreshed, the outbox replayed and learned quality merged.
    sync_interval_s: Annotated[float, Field(ge=0.05, le=60, allow_inf_nan=False)] = 0.5
    socket_timeout_s: Annotated[float, Field(gt=0, le=30, allow_inf_nan=False)] = 0.5
    connect_timeout_s: Annotated[float, Field(gt=0, le=30, allow_inf_nan=False)] = 1.0
    max_connections: Annotated[int, Field(ge=2, le=1000)] = 50

    @field_validator("redis_url")
    @classmethod
    def _url_shape(cls, v: str | None) -> str | None:
        if v is None:
            return v
        return url_with_scheme(v, _REDIS_SCHEMES, "redis://",
                               "a redis://, rediss:// or unix:// URL")

    @field_serializer("redis_url")
    def _mask(self, v: str | None) -> str | None:
        return None if v is None else masked_redis_url(v)

    def url(self) -> str | None:
        """The Redis URL to connect to (from the file or the environment), or None."""
        if self.redis_url_env:
            return os.environ.get(self.redis_url_env) or None
        return self.redis_url

    @property
    def enabled(self) -> bool:
        """Whether this sidecar shares its state with a fleet."""
        return self.redis_url is not None or self.redis_url_env is not None
