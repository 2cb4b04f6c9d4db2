"""The `providers` section (execute mode): endpoints, keys, headers and timeouts."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
)

from routing_sidecar import calls
from routing_sidecar.config_base import Seconds, _Strict

if TYPE_CHECKING:
    from routing_sidecar.config import RouterConfig


# --- providers (execute mode) --------------------------------------------------------------

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


def check_providers(cfg: RouterConfig) -> Iterator[str]:
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
