"""Stream replay rows through fresh sidecars over gRPC: Route, then report the chosen reward.

Each run (one policy at one quality bar) gets its own sidecar and its own empty SQLite store,
so every run starts from an empty learned state. Inside a run prompts go strictly in file
order: prompt i is routed and its outcome reported before prompt i + 1 is routed. Runs are
independent, so several go at once (one sidecar each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.procs import REPO, ROUTER_SERVICE, free_port, log_tail, sidecar_executable, spawn
from bench.replay_data import MAX_OUTPUT_TOKENS, Row
from routing_sidecar.config import RouterConfig, load_config
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

CONFIG = REPO / "config" / "replay.yaml"
RPC_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 60.0
# Reconnect quickly while the sidecar is still starting (gRPC's default backoff is 1 s).
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20),
                  ("grpc.max_reconnect_backoff_ms", 20)]


@dataclass(frozen=True)
class RunSpec:
    """One replay: every row routed under `policy` with requires.min_quality = `bar`."""

    policy: str
    bar: float

    @property
    def name(self) -> str:
        return f"{self.policy}-q{self.bar:.3f}"


@dataclass(frozen=True)
class RunResult:
    """Per prompt, the chosen model (None when not ROUTED); plus what the estimates did."""

    spec: RunSpec
    choices: tuple[str | None, ...]
    # Per prompt: the chosen model was admitted by exploration, not proven for the bar.
    explored: tuple[bool, ...]
    # Prompts whose decision carried an estimated_quality other than the catalog prior.
    learned_decisions: int
    # Prompts whose decision dropped a candidate because its circuit breaker was open.
    breaker_decisions: int
    seconds: float


def catalog_priors(config: Path = CONFIG) -> dict[str, float]:
    """Each model's catalog quality prior, to tell learned estimates from the prior."""
    raw: dict[str, Any] = yaml.safe_load(config.read_text())
    return {name: float(m["quality"]) for name, m in raw["models"].items()}


def learning_settings(config: Path = CONFIG) -> str:
    """The sidecar's learning and breaker settings for this config, as one line of JSON."""
    cfg = load_config(config)
    parts = {}
    if hasattr(cfg, "learning"):
        parts["learning"] = cfg.learning.model_dump()
    if hasattr(cfg, "health"):
        parts["health.breaker"] = cfg.health.breaker.model_dump()
    return json.dumps(parts, separators=(",", ":")) if parts else "none (no learning section)"


def write_config(store: Path, out: Path, config: Path = CONFIG) -> Path:
    """A copy of config/replay.yaml whose store lives at `store`, telemetry off.

    Several sidecars run at once, so none may bind the fixed metrics admin port.
    """
    raw: dict[str, Any] = yaml.safe_load(config.read_text())
    raw.setdefault("store", {})["path"] = str(store)
    if "telemetry" in RouterConfig.model_fields:
        raw["telemetry"] = {"exporter": "none", "admin_listen": "", **raw.get("telemetry", {})}
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def route_request(i: int, row: Row, spec: RunSpec) -> pb.RouteRequest:
    """Route prompt i: task_type = its source, the run's bar and policy, objective COST_SPEED."""
    return pb.RouteRequest(
        task_id=f"{spec.name}-{i}",
        task_type=row.source,
        priority=50,
        requires=pb.Requirements(min_quality=spec.bar),
        estimated_input_tokens=row.input_tokens,
        max_output_tokens=MAX_OUTPUT_TOKENS,
        objective=pb.OBJECTIVE_COST_SPEED,
        policy=spec.policy,
    )


def outcome(decision: pb.Decision, row: Row) -> pb.Outcome:
    """The chosen model's recorded reward as quality and its recorded cost as actual cost."""
    model = decision.model
    reward = row.reward[model]
    ok = reward >= 0.5
    # Every call in the data returned an answer: the attempt succeeded, and how good the answer
    # was is the outcome's quality. Error statuses are for failed calls (they trip breakers).
    attempt = pb.Attempt(
        model=model,
        status=pb.ATTEMPT_STATUS_SUCCESS,
        input_tokens=row.input_tokens,
        cost_micros=round(row.cost[model] * 1e6),
    )
    return pb.Outcome(decision_id=decision.decision_id, attempts=[attempt], success=ok,
                      quality=reward)


def learned(decision: pb.Decision, priors: Mapping[str, float]) -> bool:
    """True when some candidate's quality estimate differs from its catalog prior."""
    return any(abs(a.estimated_quality - priors.get(a.model, a.estimated_quality)) > 1e-9
               for a in decision.alternatives if a.rejection != "excluded")


def explored(decision: pb.Decision) -> bool:
    """True when the chosen model was admitted by exploration (its reason says 'exploring')."""
    return any(a.chosen and "exploring:" in a.reason for a in decision.alternatives)


def breaker_open(decision: pb.Decision) -> bool:
    """True when some candidate was dropped because its circuit breaker was open."""
    return any(a.rejection == "circuit_open" for a in decision.alternatives)


@dataclass
class _Tally:
    choices: list[str | None] = field(default_factory=list)
    explored: list[bool] = field(default_factory=list)
    learned: int = 0
    breaker: int = 0

    def add(self, decision: pb.Decision, priors: Mapping[str, float]) -> bool:
        """Record a decision; True when it was ROUTED."""
        routed = decision.status == pb.DECISION_STATUS_ROUTED
        self.choices.append(decision.model if routed else None)
        self.explored.append(explored(decision))
        self.learned += learned(decision, priors)
        self.breaker += breaker_open(decision)
        return routed


async def stream(address: str, rows: Sequence[Row], spec: RunSpec,
                 priors: Mapping[str, float]) -> _Tally:
    """Route every row in order over one channel, reporting each outcome before the next."""
    tally = _Tally()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RouterStub(channel)
        for i, row in enumerate(rows):
            decision = await stub.Route(route_request(i, row, spec), timeout=RPC_TIMEOUT_S)
            if tally.add(decision, priors):
                await stub.ReportOutcome(outcome(decision, row), timeout=RPC_TIMEOUT_S)
    return tally


async def wait_serving(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """bench.procs.wait_serving without blocking the event loop (other runs keep going)."""
    request = health_pb2.HealthCheckRequest(service=ROUTER_SERVICE)
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT_S
    async with grpc.aio.insecure_channel(address, options=FAST_RECONNECT) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{address}: sidecar exited with {proc.returncode}:\n"
                                   f"{log_tail(log)}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(request, timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{address}: not SERVING after {STARTUP_TIMEOUT_S:.0f} s:\n"
                                   f"{log_tail(log)}")
            await asyncio.sleep(0.02)


async def run_one(spec: RunSpec, rows: Sequence[Row], work: Path,
                  priors: Mapping[str, float]) -> RunResult:
    """Start a fresh sidecar with an empty store, replay every row through it, stop it."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    config = write_config(work / f"{spec.name}.db", work / f"{spec.name}.yaml")
    address = f"127.0.0.1:{free_port()}"
    log = work / f"{spec.name}.log"
    argv = [sidecar_executable(), "serve", "--config", str(config), "--listen", address]
    # The process joins the stack as soon as it exists, so every exit path stops it.
    with contextlib.ExitStack() as stack:
        proc = stack.enter_context(spawn(argv, log))
        try:
            await wait_serving(address, proc, log)
            t = await stream(address, rows, spec, priors)
        finally:
            proc.terminate()
            await asyncio.to_thread(stack.close)
    return RunResult(spec, tuple(t.choices), tuple(t.explored), t.learned, t.breaker,
                     loop.time() - t0)


async def run_all(specs: Sequence[RunSpec], rows: Sequence[Row], work: Path, parallel: int,
                  on_done: Any = None) -> list[RunResult]:
    """Every run, `parallel` at a time, results in the order of `specs`."""
    gate = asyncio.Semaphore(parallel)
    priors = catalog_priors()

    async def guarded(spec: RunSpec) -> RunResult:
        async with gate:
            result = await run_one(spec, rows, work, priors)
        if on_done is not None:
            on_done(result)
        return result

    return list(await asyncio.gather(*(guarded(s) for s in specs)))
