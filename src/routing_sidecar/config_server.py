"""The sections about where the sidecar listens and keeps its books.

Server, store, ledger, telemetry and admin.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from routing_sidecar.config_base import (
    DAY_S,
    MIN_TTL_S,
    Fraction,
    _Strict,
    admin_listen_shape,
    is_loopback_host,
    url_with_scheme,
)


class TlsConfig(_Strict):
    """The gRPC port's certificate and key (PEM); with client_ca_file, clients need one too."""

    cert_file: Annotated[str, Field(min_length=1)]
    key_file: Annotated[str, Field(min_length=1)]
    client_ca_file: Annotated[str, Field(min_length=1)] | None = None  # set: mutual TLS


class ServerConfig(_Strict):
    """Where the gRPC server listens, who may call it, and how it drains.

    A listen address that is not loopback or a Unix socket needs `tls` or `token_file` (README
    "Trust model"), unless `allow_insecure_remote` says the network is trusted as it is.
    """

    listen: str = "127.0.0.1:50051"
    grace_period_s: Annotated[float, Field(ge=0, le=300)] = 5.0
    max_request_bytes: Annotated[int, Field(ge=1024, le=64 << 20)] = 1 << 20
    tls: TlsConfig | None = None
    # A file holding the bearer token every call but health and reflection must carry.
    token_file: Annotated[str, Field(min_length=1)] | None = None
    allow_insecure_remote: bool = False
    # auto: uvloop when installed (it is a dependency), asyncio's own loop otherwise.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

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
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True,
                              allow_inf_nan=False)

    path: Annotated[str, Field(min_length=1)] | None = None
    url: str | None = Field(default=None, repr=False)
    retention_days: Annotated[int, Field(ge=1, le=36_500)] = 30
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
        if v is None:
            return v
        return url_with_scheme(v, _PG_SCHEMES, "postgresql://",
                               "a postgresql:// or postgres:// URL")

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

    # At least a second: expiry is swept every ttl/4, and a tiny TTL would spin the sweeper.
    reservation_ttl_s: Annotated[float, Field(ge=MIN_TTL_S, le=7 * DAY_S)] = 900.0
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
    metric_export_interval_s: Annotated[float, Field(ge=0.1, le=3600)] | None = None

    @field_validator("admin_listen")
    @classmethod
    def _admin_shape(cls, v: str) -> str:
        return admin_listen_shape(v)


def is_local_listen(listen: str) -> bool:
    """A Unix socket or a loopback HOST:PORT: reachable from inside the pod only."""
    return listen.startswith("unix:") or is_loopback_host(listen.rpartition(":")[0])


def remote_grpc_problem(listen: str, server: ServerConfig, *,
                        allow_insecure: bool = False) -> str | None:
    """Why a gRPC listen address is refused: remote with neither TLS nor a token; else None.

    `allow_insecure`: serve --allow-insecure-remote, as server.allow_insecure_remote does.
    """
    if is_local_listen(listen) or server.tls or server.token_file:
        return None
    if allow_insecure or server.allow_insecure_remote:
        return None
    return (f"{listen} is not a loopback address or a Unix socket; set server.tls or "
            "server.token_file (or server.allow_insecure_remote: true on a trusted network)")


def remote_admin_problem(listen: str, token_file: str | None, *,
                         allow_insecure: bool = False) -> str | None:
    """Why an admin listen address is refused: remote without a token file; None when fine.

    `allow_insecure` (server.allow_insecure_remote or serve --allow-insecure-remote): the
    network is the boundary for the admin port as for gRPC.
    """
    if not listen or token_file or allow_insecure:
        return None
    host = listen.rpartition(":")[0]
    if is_loopback_host(host):
        return None
    return (f"{listen} is not a loopback address; set admin.token_file so that changes made "
            "through the HTTP API need a bearer token (or server.allow_insecure_remote: true "
            "on a trusted network)")


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
