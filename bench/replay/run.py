"""Stream replay rows through fresh sidecars over gRPC: Route, then report the chosen reward.

Each run (one policy at one quality bar, or at one task value) gets its own sidecar and its
own empty SQLite store, so every run starts from an empty learned state. Inside a run prompts
go strictly in file order: prompt i is routed and its outcome reported before prompt i + 1 is
routed. Runs are independent, so several go at once (one sidecar each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.procs import REPO, ROUTER_SERVICE, free_port, log_tail, sidecar_executable, spawn
from bench.replay.data import MAX_OUTPUT_TOKENS, Price, Row, implied_output_tokens
from routing_sidecar.config import load_config
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

CONFIG = REPO / "config" / "replay.yaml"
RPC_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 60.0
# Reconnect quickly while the sidecar is still starting (gRPC's default backoff is 1 s).
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20),
                  ("grpc.max_reconnect_backoff_ms", 20)]


class Knob(StrEnum):
    """What a sweep turns: the quality bar (requires.min_quality) or the task's value."""

    BAR = "bar"
    VALUE = "value"


@dataclass(frozen=True)
class RunSpec:
    """One replay: every row routed under `policy` at one bar or at one value (not both)."""

    policy: str
    bar: float | None = None
    value_micros: int | None = None

    def __post_init__(self) -> None:
        if (self.bar is None) == (self.value_micros is None):
            raise ValueError(f"a run sets exactly one of bar and value_micros: {self!r}")

    @classmethod
    def at(cls, policy: str, knob: Knob, level: float) -> RunSpec:
        """The run of `policy` at sweep point `level` (a bar, or a value in USD)."""
        if knob is Knob.BAR:
            return cls(policy, bar=level)
        return cls(policy, value_micros=round(level * 1e6))

    @property
    def knob(self) -> Knob:
        return Knob.BAR if self.bar is not None else Knob.VALUE

    @property
    def level(self) -> float:
        """The swept coordinate: the bar, or the value in USD."""
        if self.bar is not None:
            return self.bar
        assert self.value_micros is not None
        return self.value_micros / 1e6

    @property
    def name(self) -> str:
        """Unique within a full run: `replay-q0.725`, `weak_strong-v150000` (micro-USD)."""
        if self.bar is not None:
            return f"{self.policy}-q{self.bar:.3f}"
        return f"{self.policy}-v{self.value_micros}"


@dataclass(frozen=True)
class RunResult:
    """Per prompt, the chosen model (None when not ROUTED); plus what the estimates did."""

    spec: RunSpec
    choices: tuple[str | None, ...]
    # Per prompt: the decision says its chosen model was tried by exploration.
    explored: tuple[bool, ...]
    # Prompts routed below an unmet floor (REASON_CODE_BELOW_FLOOR).
    below_floor: int
    # Prompts whose decision carried an estimated_quality other than the catalog prior.
    learned_decisions: int
    # Prompts whose decision dropped a candidate because its circuit breaker was open.
    breaker_decisions: int
    seconds: float


@dataclass(frozen=True)
class Catalog:
    """What the harness needs of config/replay.yaml: quality priors and prices per model."""

    priors: Mapping[str, float]
    prices: Mapping[str, Price]

    @classmethod
    def read(cls, config: Path = CONFIG) -> Catalog:
        raw: dict[str, Any] = yaml.safe_load(config.read_text())
        models: dict[str, Any] = raw["models"]
        return cls({name: float(m["quality"]) for name, m in models.items()},
                   {name: Price(float(m["input_per_mtok"]), float(m["output_per_mtok"]))
                    for name, m in models.items()})


def learning_settings(config: Path = CONFIG) -> str:
    """The sidecar's learning and breaker settings for this config, as one line of JSON."""
    cfg = load_config(config)
    parts = {"learning": cfg.learning.model_dump(),
             "health.breaker": cfg.health.breaker.model_dump()}
    return json.dumps(parts, separators=(",", ":"))


def write_config(store: Path, out: Path, config: Path = CONFIG) -> Path:
    """A copy of config/replay.yaml whose store lives at `store`, telemetry off.

    Several sidecars run at once, so none may bind the fixed metrics admin port.
    """
    raw: dict[str, Any] = yaml.safe_load(config.read_text())
    raw.setdefault("store", {})["path"] = str(store)
    raw["telemetry"] = {"exporter": "none", "admin_listen": "", **raw.get("telemetry", {})}
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def route_request(i: int, row: Row, spec: RunSpec) -> pb.RouteRequest:
    """Route prompt i: task_type = its source, the run's bar or value, objective COST_SPEED."""
    request = pb.RouteRequest(
        task_id=f"{spec.name}-{i}",
        task_type=row.source,
        priority=50,
        estimated_input_tokens=row.input_tokens,
        max_output_tokens=MAX_OUTPUT_TOKENS,
        objective=pb.OBJECTIVE_COST_SPEED,
        policy=spec.policy,
    )
    if spec.bar is not None:
        request.requires.min_quality = spec.bar
    if spec.value_micros is not None:
        request.value_micros = spec.value_micros
    return request


def outcome(decision: pb.Decision, row: Row, catalog: Catalog) -> pb.Outcome:
    """The chosen model's recorded reward as quality and its recorded cost as actual cost."""
    model = decision.model
    reward = row.reward[model]
    # Every call in the data returned an answer: the attempt succeeded, and how good the answer
    # was is the outcome's quality. Error statuses are for failed calls (they trip breakers).
    attempt = pb.Attempt(
        model=model,
        status=pb.ATTEMPT_STATUS_SUCCESS,
        input_tokens=row.input_tokens,
        output_tokens=implied_output_tokens(catalog.prices[model], row.input_tokens,
                                            row.cost[model]),
        cost_micros=round(row.cost[model] * 1e6),
    )
    return pb.Outcome(decision_id=decision.decision_id, attempts=[attempt],
                      success=reward >= 0.5, quality=reward)


def learned(decision: pb.Decision, priors: Mapping[str, float]) -> bool:
    """True when some candidate's quality estimate differs from its catalog prior."""
    return any(abs(a.estimated_quality - priors.get(a.model, a.estimated_quality)) > 1e-9
               for a in decision.alternatives if a.rejection != "excluded")


def breaker_open(decision: pb.Decision) -> bool:
    """True when some candidate was dropped because its circuit breaker was open."""
    return any(a.rejection == "circuit_open" for a in decision.alternatives)


@dataclass
class _Tally:
    choices: list[str | None] = field(default_factory=list)
    explored: list[bool] = field(default_factory=list)
    below_floor: int = 0
    learned: int = 0
    breaker: int = 0

    def add(self, decision: pb.Decision, priors: Mapping[str, float]) -> bool:
        """Record a decision; True when it was ROUTED."""
        routed = decision.status == pb.DECISION_STATUS_ROUTED
        self.choices.append(decision.model if routed else None)
        self.explored.append(routed and decision.explored)
        self.below_floor += decision.reason_code == pb.REASON_CODE_BELOW_FLOOR
        self.learned += learned(decision, priors)
        self.breaker += breaker_open(decision)
        return routed


async def stream(address: str, rows: Sequence[Row], spec: RunSpec, catalog: Catalog) -> _Tally:
    """Route every row in order over one channel, reporting each outcome before the next."""
    tally = _Tally()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RouterStub(channel)
        for i, row in enumerate(rows):
            decision = await stub.Route(route_request(i, row, spec), timeout=RPC_TIMEOUT_S)
            if tally.add(decision, catalog.priors):
                await stub.ReportOutcome(outcome(decision, row, catalog), timeout=RPC_TIMEOUT_S)
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


async def run_one(spec: RunSpec, rows: Sequence[Row], work: Path, catalog: Catalog) -> RunResult:
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
            t = await stream(address, rows, spec, catalog)
        finally:
            proc.terminate()
            await asyncio.to_thread(stack.close)
    return RunResult(spec, tuple(t.choices), tuple(t.explored), t.below_floor, t.learned,
                     t.breaker, loop.time() - t0)


async def run_all(specs: Sequence[RunSpec], rows: Sequence[Row], work: Path, parallel: int,
                  on_done: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Every run, `parallel` at a time, results in the order of `specs`."""
    gate = asyncio.Semaphore(parallel)
    catalog = Catalog.read()

    async def guarded(spec: RunSpec) -> RunResult:
        async with gate:
            result = await run_one(spec, rows, work, catalog)
        if on_done is not None:
            on_done(result)
        return result

    return list(await asyncio.gather(*(guarded(s) for s in specs)))
