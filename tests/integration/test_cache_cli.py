"""`routing-sidecar cache stats|purge` and `report` against a running sidecar, as run by a user."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc

from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.e2e.test_process import BIN
from tests.fakes import FakeClock
from tests.integration.test_cache_rpc import Car, cache_config, start_car


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cache_stats_purge_and_report(tmp_path: Path) -> None:
    sidecar, _ = await start_car(cache_config(tmp_path))
    try:
        async with grpc.aio.insecure_channel(sidecar.address) as ch:
            car = Car(sidecar, FakeClock(), pb_grpc.RouterStub(ch))
            stored = await car.store("nightly-report", b"all green", project="alpha")
            await car.store("beta-thing", b"ok", project="beta")
            await car.route("nightly-report")
            target = ("--target", sidecar.address)

            code, out, _ = await cli("cache", "stats", *target)
            assert code == 0
            assert "backend sqlite  entries 2 of 100000" in out
            assert "hits 1  misses 2  hit rate 33.3%" in out
            row = next(line for line in out.splitlines() if " alpha " in line)
            assert row.split()[1:6] == [stored.policy, "alpha", "1", "1", "50.0%"]

            code, out, _ = await cli("cache", "stats", "--project", "beta", "--json", *target)
            doc = json.loads(out)
            assert code == 0 and doc["entries"] == "1"
            assert [u["project"] for u in doc["usage"]] == ["beta"]

            code, out, _ = await cli("report", "--hours", "1", *target)
            assert code == 0 and "cache: namespace" in out and "50.0%" in out

            code, out, err = await cli("cache", "purge", *target)
            assert code == 1 and "INVALID_ARGUMENT: all:" in err and not out
            code, out, _ = await cli("cache", "purge", "--project", "alpha", *target)
            assert (code, out.strip()) == (0, "purged 1 entries")
            code, out, _ = await cli("cache", "purge", "--all", *target)
            assert (code, out.strip()) == (0, "purged 1 entries")
            code, out, _ = await cli("cache", "stats", "--json", *target)
            assert json.loads(out).get("entries", "0") == "0"
    finally:
        await sidecar.stop()
