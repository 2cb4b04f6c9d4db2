"""kill -9 while answers are being stored: every store that was acknowledged is a hit after.

Decision mode (ReportOutcome with cache_value) and execute mode (a Complete's done).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict, free_port, write_config
from tests.e2e.test_crash_recovery import Server, servers, start_server  # noqa: F401
from tests.e2e.test_process import BIN
from tests.integration.complete_env import KEY, KEY_ENV, config_raw

WORKERS = 12
MIN_STORED = 40
HARD_DEADLINE_S = 30.0
RPC_TIMEOUT_S = 10.0


@dataclass
class Stores:
    acked: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # key -> (value, source)
    killed: bool = False
    in_flight: int = 0
    in_flight_at_kill: int = -1
    errors_before_kill: list[str] = field(default_factory=list)


def route(key: str) -> pb.RouteRequest:
    return pb.RouteRequest(task_id=f"t-{key}", task_type="analyze_logs", priority=50,
                           estimated_input_tokens=800, max_output_tokens=200,
                           labels={"project": "alpha"}, cache_key=key)


async def rpc(s: Stores, call: object, request: object) -> object | None:
    s.in_flight += 1
    try:
        return await call(request, timeout=RPC_TIMEOUT_S)  # type: ignore[operator]
    except grpc.aio.AioRpcError as exc:
        if not s.killed:
            s.errors_before_kill.append(f"{exc.code().name}: {exc.details()}")
        return None
    finally:
        s.in_flight -= 1


async def worker(stub: pb_grpc.RouterStub, n: int, s: Stores) -> None:
    i = 0
    while not s.killed:
        key = f"log-signature-{n}-{i}"
        i += 1
        d = await rpc(s, stub.Route, route(key))
        if not isinstance(d, pb.Decision):
            return
        value = f"triage of {key}: restart the disk cleaner".encode()
        ack = await rpc(s, stub.ReportOutcome, pb.Outcome(
            decision_id=d.decision_id, success=True, cache_value=value, attempts=[
                pb.Attempt(model=d.model, status=pb.ATTEMPT_STATUS_SUCCESS, input_tokens=800,
                           output_tokens=150)]))
        if not isinstance(ack, pb.OutcomeAck):
            return
        assert ack.cache_stored, key
        s.acked[key] = (value, d.decision_id)


async def killer(pid: int, s: Stores) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        ready = len(s.acked) >= MIN_STORED and s.in_flight > 0
        if ready or s.errors_before_kill or loop.time() - started >= HARD_DEADLINE_S:
            break
        await asyncio.sleep(0.005)
    s.in_flight_at_kill = s.in_flight
    s.killed = True
    os.kill(pid, signal.SIGKILL)


async def load(target: str, pid: int) -> Stores:
    s = Stores()
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.RouterStub(ch)
        tasks = [asyncio.create_task(worker(stub, n, s)) for n in range(WORKERS)]
        await asyncio.wait_for(asyncio.gather(killer(pid, s), *tasks),
                               HARD_DEADLINE_S + 2 * RPC_TIMEOUT_S)
    return s


async def hits(target: str, keys: list[str]) -> dict[str, pb.Decision]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.RouterStub(ch)
        answers = [await stub.Route(route(k), timeout=RPC_TIMEOUT_S) for k in keys]
    return dict(zip(keys, answers, strict=True))


def test_kill_9_after_stores_loses_no_acknowledged_entry(
    tmp_path: Path, servers: list[Server]  # noqa: F811
) -> None:
    raw = config_dict(tmp_path)
    raw["cache"] = {"ttl_s": 3600}
    config = write_config(tmp_path, raw)
    first = start_server(config, tmp_path / "first.log")
    servers.append(first)
    stores = asyncio.run(load(first.target, first.proc.pid))
    assert first.proc.wait(timeout=10) == -signal.SIGKILL, first.logs()
    assert not stores.errors_before_kill, stores.errors_before_kill[:3]
    assert len(stores.acked) >= MIN_STORED and stores.in_flight_at_kill > 0

    second = start_server(config, tmp_path / "second.log")
    servers.append(second)
    answers = asyncio.run(hits(second.target, sorted(stores.acked)))
    missing = [k for k, d in answers.items() if d.status != pb.DECISION_STATUS_CACHE_HIT]
    assert not missing, f"{len(missing)} acknowledged stores lost, e.g. {missing[:3]}"
    for key, d in answers.items():
        assert (d.cached_value, d.cache_source_decision_id) == stores.acked[key]
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=15) == 0, second.logs()


# -- execute mode ---------------------------------------------------------------------------


def complete_request(key: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(
        route=pb.RouteRequest(task_id=f"t-{key}", task_type="answer",
                              labels={"project": "alpha"}),
        messages=[pb.ChatMessage(role="user", content=f"What does alert {key} mean?")],
        temperature=0.0)


async def run_complete(stub: pb_grpc.RouterStub, req: pb.CompleteRequest) -> pb.CompleteDone:
    done = pb.CompleteDone()
    async for event in stub.Complete(req, timeout=RPC_TIMEOUT_S):
        if event.WhichOneof("event") == "done":
            done = event.done
    return done


async def complete_worker(stub: pb_grpc.RouterStub, n: int, s: Stores) -> None:
    i = 0
    while not s.killed:
        key = f"{n}-{i}"
        i += 1
        s.in_flight += 1
        try:
            done = await run_complete(stub, complete_request(key))
        except grpc.aio.AioRpcError as exc:
            if not s.killed:
                s.errors_before_kill.append(f"{exc.code().name}: {exc.details()}")
            return
        finally:
            s.in_flight -= 1
        assert done.success and not done.cache_hit, done
        s.acked[key] = (done.text.encode(), done.decision_id)


async def complete_load(target: str, pid: int) -> Stores:
    s = Stores()
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.RouterStub(ch)
        tasks = [asyncio.create_task(complete_worker(stub, n, s)) for n in range(WORKERS)]
        await asyncio.wait_for(asyncio.gather(killer(pid, s), *tasks),
                               HARD_DEADLINE_S + 2 * RPC_TIMEOUT_S)
    return s


async def complete_hits(target: str, keys: list[str]) -> dict[str, pb.CompleteDone]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.RouterStub(ch)
        return {k: await run_complete(stub, complete_request(k)) for k in keys}


def test_kill_9_after_completes_loses_no_acknowledged_answer(
    tmp_path: Path, servers: list[Server], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)  # the sidecar processes read the provider key from it
    port = free_port()
    fake_log = (tmp_path / "fake.log").open("wb")
    fake = subprocess.Popen([str(BIN), "fake-provider", "--listen", f"127.0.0.1:{port}"],
                            stdout=fake_log, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        raw = config_raw(tmp_path, f"http://127.0.0.1:{port}")
        raw["cache"] = {"ttl_s": 3600}
        raw["server"]["grace_period_s"] = 2
        config = write_config(tmp_path, raw)
        first = start_server(config, tmp_path / "first.log")
        servers.append(first)
        stores = asyncio.run(complete_load(first.target, first.proc.pid))
        assert first.proc.wait(timeout=10) == -signal.SIGKILL, first.logs()
        assert not stores.errors_before_kill, stores.errors_before_kill[:3]
        assert len(stores.acked) >= MIN_STORED and stores.in_flight_at_kill > 0

        second = start_server(config, tmp_path / "second.log")
        servers.append(second)
        answers = asyncio.run(complete_hits(second.target, sorted(stores.acked)))
        missing = [k for k, d in answers.items() if not d.cache_hit]
        assert not missing, f"{len(missing)} acknowledged answers lost, e.g. {missing[:3]}"
        for key, done in answers.items():
            assert done.text.encode() == stores.acked[key][0]
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=15) == 0, second.logs()
    finally:
        fake.terminate()
        fake.wait(timeout=10)
        fake_log.close()


def wait_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on {port}")
