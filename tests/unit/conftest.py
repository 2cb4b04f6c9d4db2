"""Shared builders for the pure-core unit tests: small specs and the shipped catalog."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from routing_sidecar.config import load_config
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.domain import MICROS_PER_USD, ModelSpec

ROUTER_YAML = Path(__file__).resolve().parents[2] / "config" / "router.yaml"


def spec(
    name: str,
    provider: str = "p",
    tier: int = 1,
    inp: float = 1.0,
    out: float = 5.0,
    ctx: int = 200_000,
    tps: float = 100.0,
    q: float = 0.7,
    caps: Iterable[str] = ("code",),
) -> ModelSpec:
    """A ModelSpec with prices given in USD per million tokens."""
    return ModelSpec(
        name=name, provider=provider, tier=tier,
        input_micros_per_mtok=round(inp * MICROS_PER_USD),
        output_micros_per_mtok=round(out * MICROS_PER_USD),
        context_window=ctx, tokens_per_s=tps, quality=q, capabilities=frozenset(caps),
    )


@pytest.fixture(scope="session")
def router_catalog() -> Catalog:
    """The catalog of the shipped config/router.yaml."""
    return Catalog.from_settings(load_config(ROUTER_YAML).settings())
