"""Builds the provider clients of a config: one per `providers:` entry, keyed by name."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from routing_sidecar.calls import ExecutionSettings, ProviderKind, ProviderSettings
from routing_sidecar.ports import ProviderClient
from routing_sidecar.providers.base import resolve_key
from routing_sidecar.providers.fake import FakeProvider

log = logging.getLogger(__name__)


def build_client(settings: ProviderSettings, environ: Mapping[str, str] | None = None
                 ) -> ProviderClient:
    """The adapter of one provider, its key read from env or file now (never logged)."""
    if settings.kind is ProviderKind.FAKE:
        return FakeProvider(settings)
    key = resolve_key(settings, environ)
    # Imported here: the HTTP adapters (httpx) load only when a config names a real provider,
    # which keeps a decision-only sidecar's start short.
    if settings.kind is ProviderKind.ANTHROPIC:
        from routing_sidecar.providers.anthropic import AnthropicProvider  # noqa: PLC0415

        return AnthropicProvider(settings, key)
    from routing_sidecar.providers.openai import OpenAIProvider  # noqa: PLC0415

    return OpenAIProvider(settings, key)


class ProviderRegistry:
    """The clients of every configured provider; a provider with no entry has no client."""

    def __init__(self, clients: Mapping[str, ProviderClient]) -> None:
        self._clients = dict(clients)

    @classmethod
    def from_settings(cls, settings: ExecutionSettings,
                      environ: Mapping[str, str] | None = None) -> ProviderRegistry:
        """One client per provider entry; those without a readable key are logged (by name)."""
        clients = {name: build_client(s, environ) for name, s in settings.providers.items()}
        missing = sorted(n for n, c in clients.items() if not c.has_credentials())
        if missing:
            log.warning("providers without credentials are skipped in execute mode",
                        extra={"providers": missing})
        return cls(clients)

    def get(self, provider: str) -> ProviderClient | None:
        """The client of a provider, or None when it has no `providers` entry."""
        return self._clients.get(provider)

    def has_credentials(self, provider: str) -> bool:
        """True when the provider has a client able to authenticate."""
        client = self._clients.get(provider)
        return client is not None and client.has_credentials()

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    async def aclose(self) -> None:
        """Close every client's connection pool."""
        for client in self._clients.values():
            await client.aclose()
