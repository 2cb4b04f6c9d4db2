"""A fleet of real `routing-sidecar serve` processes on one Redis and one PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict, free_port, write_config
from tests.e2e.test_crash_recovery import Server, start_server, stop
from tests.e2e.test_process import BIN, wait_serving
from tests.pg_server import PgServer
from tests.redis_server import RedisServer, redis_server

LIMIT = 50_000  # micro-USD: a few dozen of the decisions below


def fleet_raw(tmp_path: Path, dsn: str, redis_url: str, name: str) -> dict[str, Any]:
    raw = config_dict(tmp_path)
    raw["store"] = {"url": dsn, "pool_size": 4}
    raw["fleet"] = {"redis_url": redis_url, "outbox_path": str(tmp_path / f"{name}.outbox"),
                    "sync_interval_s": 0.1}
    raw["budgets"] = [{"scope": "global", "period": "day", "limit_usd": LIMIT / 1e6}]
    return raw


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis", appendonly=True) as s:
        yield s


@pytest.fixture
def started() -> Iterator[list[Server]]:
    procs: list[Server] = []
    try:
        yield procs
    finally:
        for s in procs:
            stop(s)


def request(i: int) -> pb.RouteRequest:
    return pb.RouteRequest(task_id=f"t-{i}", task_type="simple_query", priority=50,
                           estimated_input_tokens=2_000, max_output_tokens=500, policy="ops",
                           exclude_models=["llama-3.1-8b-local"])


async def route_all(targets: list[str], n: int) -> list[pb.Decision]:
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    try:
        stubs = [pb_grpc.RouterStub(ch) for ch in channels]
        return list(await asyncio.gather(
            *(stubs[i % len(stubs)].Route(request(i), timeout=20) for i in range(n))))
    finally:
        for ch in channels:
            await ch.close()


def test_three_sidecar_processes_share_one_budget(
    tmp_path: Path, pg: PgServer, pg_dsn: str, redis: RedisServer, started: list[Server],
) -> None:
    for n in range(3):
        config = write_config(tmp_path, fleet_raw(tmp_path, pg_dsn, redis.url, f"s{n}"),
                              f"s{n}.yaml")
        started.append(start_server(config, tmp_path / f"s{n}.log"))
    decisions = asyncio.run(route_all([s.target for s in started], 300))
    routed = [d for d in decisions if d.status == pb.DECISION_STATUS_ROUTED]
    cost = {d.estimated_cost_micros for d in routed}
    assert len(cost) == 1, cost  # one price: the limit fits a whole number of decisions
    fits = LIMIT // cost.pop()
    assert max(1, fits - 5) <= len(routed) <= fits, (len(routed), fits)
    with grpc.insecure_channel(started[1].target) as ch:
        [status] = pb_grpc.RouterStub(ch).GetBudgetStatus(pb.BudgetQuery(scopes=["global"]),
                                                          timeout=10).budgets
    assert status.spent_micros + status.reserved_micros <= status.limit_micros
    assert status.reserved_micros == sum(d.estimated_cost_micros for d in routed)


def test_workers_share_one_port_and_drain_together(
    tmp_path: Path, pg: PgServer, pg_dsn: str, redis: RedisServer,
) -> None:
    raw = fleet_raw(tmp_path, pg_dsn, redis.url, "w")
    target = f"127.0.0.1:{free_port()}"
    raw["server"]["listen"] = target
    raw["telemetry"]["admin_listen"] = ""
    raw["budgets"] = [{"scope": "global", "period": "day", "limit_usd": 100}]
    config = write_config(tmp_path, raw, "workers.yaml")
    with (tmp_path / "workers.log").open("wb") as out:
        proc = subprocess.Popen([str(BIN), "serve", "--config", str(config), "--workers", "2"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_serving(target, proc)
        time.sleep(0.5)  # both workers bound (the second may come up a moment later)
        decisions = asyncio.run(route_all([target] * 8, 40))
        assert all(d.status == pb.DECISION_STATUS_ROUTED for d in decisions)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, (tmp_path / "workers.log").read_text()[-3000:]
        log = (tmp_path / "workers.log").read_text()
        assert log.count('"msg": "sidecar started"') == 2, log[-3000:]
        assert log.count('"msg": "sidecar stopped"') == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_without_fleet_state_refuse_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, config_dict(tmp_path), "single.yaml")
    done = subprocess.run([str(BIN), "serve", "--config", str(config), "--workers", "2"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "fleet.redis_url: --workers needs" in done.stderr
    assert "Traceback" not in done.stderr


def test_workers_stop_when_their_supervisor_is_killed(
    tmp_path: Path, pg: PgServer, pg_dsn: str, redis: RedisServer,
) -> None:
    raw = fleet_raw(tmp_path, pg_dsn, redis.url, "k")
    target = f"127.0.0.1:{free_port()}"
    raw["server"]["listen"] = target
    raw["telemetry"]["admin_listen"] = ""
    config = write_config(tmp_path, raw, "kill.yaml")
    with (tmp_path / "kill.log").open("wb") as out:
        proc = subprocess.Popen([str(BIN), "serve", "--config", str(config), "--workers", "2"],
                                stdout=out, stderr=subprocess.STDOUT)
    wait_serving(target, proc)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while True:  # no worker may outlive it and keep the port
        with socket.socket() as s:
            if s.connect_ex(tuple_of(target)) != 0:
                break
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.1)


def tuple_of(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)
