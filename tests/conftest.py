"""Shared fixtures: configs on disk and a real sidecar on 127.0.0.1:0."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml

from routing_sidecar.app import Sidecar
from routing_sidecar.config import RouterConfig, parse_config
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.pg_server import pg, pg_dsn  # noqa: F401  (PostgreSQL fixtures, one per session)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config" / "router.yaml"


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config_dict(tmp_path: Path) -> dict:  # type: ignore[type-arg]
    """The shipped config with its store moved under tmp_path and an ephemeral port."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["store"]["path"] = str(tmp_path / "routing.db")
    raw["server"]["listen"] = "127.0.0.1:0"
    raw["server"]["grace_period_s"] = 2
    # Telemetry off unless a test turns it on; /metrics on a port of its own (0: any free one).
    raw["telemetry"] = {"exporter": "none", "admin_listen": "127.0.0.1:0"}
    return raw


def write_config(tmp_path: Path, raw: dict, name: str = "router.yaml") -> Path:  # type: ignore[type-arg]
    """Write a config dict to a YAML file and return its path."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> RouterConfig:
    """The shipped config, validated, pointing at tmp_path."""
    return parse_config(yaml.safe_dump(config_dict(tmp_path)), "test")


@pytest.fixture
async def sidecar(cfg: RouterConfig) -> AsyncIterator[Sidecar]:
    """A started sidecar serving on an ephemeral loopback port."""
    car = Sidecar(cfg)
    await car.start()
    try:
        yield car
    finally:
        await car.stop()


@pytest.fixture
async def channel(sidecar: Sidecar) -> AsyncIterator[grpc.aio.Channel]:
    """A real channel to the sidecar."""
    async with grpc.aio.insecure_channel(sidecar.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.RouterStub:
    """A Router stub on the real channel."""
    return pb_grpc.RouterStub(channel)
