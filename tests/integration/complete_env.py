"""A sidecar configured for execute mode against providers on loopback, and a Complete reader.

Three catalog models, each on its own provider, in a clear order of preference (cheapest,
best and fastest first), so the decision is always m-alpha, then m-beta, then m-gamma:

    m-alpha on alpha (OpenAI wire format unless told otherwise)
    m-beta  on beta  (Anthropic wire format)
    m-gamma on gamma (OpenAI wire format)

Each model's `upstream_model` is a fake-provider script (providers/fake_script.py) chosen by
the test, so the fake server decides how each attempt goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from routing_sidecar.app import Sidecar
from routing_sidecar.config import RouterConfig, parse_config
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.fakes import PROMPT

KEY_ENV = "COMPLETE_TEST_KEY"
KEY = "sk-test-c0mpl3te-7c1f0e9d8b2a5f4e"
MODELS = ("m-alpha", "m-beta", "m-gamma")
PROVIDER_OF = {"m-alpha": "alpha", "m-beta": "beta", "m-gamma": "gamma"}
# USD per million input tokens (output costs 4x); quality; tokens per second.
_SHAPE = {"m-alpha": (0.10, 0.95, 300), "m-beta": (0.50, 0.85, 200), "m-gamma": (1.00, 0.80, 100)}
MESSAGES = [pb.ChatMessage(role=m.role.value, content=m.content) for m in PROMPT]


def base_url(kind: str, root: str) -> str:
    """OpenAI's base URL includes /v1, Anthropic's does not."""
    return f"{root}/v1" if kind == "openai" else root


def config_raw(tmp_path: Path, root: str, scripts: Mapping[str, str] | None = None, *,
               kinds: Mapping[str, str] | None = None, policy: Mapping[str, Any] | None = None,
               budgets: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The config as a dict, so a test can still change it before parsing."""
    scripts = dict(scripts or {})
    kinds = {"alpha": "openai", "beta": "anthropic", "gamma": "openai", **(kinds or {})}
    providers = {
        name: {"kind": kind, "base_url": base_url(kind, root), "api_key_env": KEY_ENV,
               "timeout_s": 20, "connect_timeout_s": 2, "first_token_timeout_s": 10}
        for name, kind in kinds.items()
    }
    models = {
        name: {"provider": PROVIDER_OF[name], "upstream_model": scripts.get(name, "fake"),
               "tier": 1, "input_per_mtok": price, "output_per_mtok": price * 4,
               "context_window": 100_000, "tokens_per_s": tps, "quality": quality}
        for name, (price, quality, tps) in _SHAPE.items()
    }
    main: dict[str, Any] = {
        "models": list(MODELS), "fallbacks": 2,
        "retry": {"max_retries": 2, "base_backoff_s": 0.01, "max_backoff_s": 2.0},
        **(policy or {}),
    }
    return {
        "server": {"listen": "127.0.0.1:0", "grace_period_s": 2},
        "store": {"path": str(tmp_path / "routing.db")},
        "telemetry": {"exporter": "none", "admin_listen": ""},
        "providers": providers, "models": models, "policies": {"main": main},
        "default_policy": "main",
        "budgets": budgets if budgets is not None else [
            {"scope": "global", "period": "day", "limit_usd": 100}],
        # Breakers trip only on purpose in these tests.
        "health": {"breaker": {"consecutive_failures": 50, "min_volume": 1000}},
    }


def complete_config(tmp_path: Path, root: str, scripts: Mapping[str, str] | None = None,
                    **kw: Any) -> RouterConfig:
    """The config, validated."""
    return parse_config(yaml.safe_dump(config_raw(tmp_path, root, scripts, **kw)), "test")


@asynccontextmanager
async def running(cfg: RouterConfig, config_path: str | None = None
                  ) -> AsyncIterator[tuple[Sidecar, pb_grpc.RouterStub]]:
    """A started sidecar and a stub on a real channel to it."""
    car = Sidecar(cfg, config_path=config_path)
    await car.start()
    try:
        async with grpc.aio.insecure_channel(car.address) as ch:
            yield car, pb_grpc.RouterStub(ch)
    finally:
        await car.stop()


def request(stream: bool = True, *, task_id: str = "t-1", messages: list[pb.ChatMessage] | None
            = None, **route: Any) -> pb.CompleteRequest:
    """A Complete of the test prompt; `route` fields go into its RouteRequest."""
    route.setdefault("task_type", "answer")
    return pb.CompleteRequest(route=pb.RouteRequest(task_id=task_id, **route),
                              messages=MESSAGES if messages is None else messages,
                              stream=stream)


@dataclass
class Seen:
    """What one Complete stream delivered, in order, and how the RPC ended."""

    kinds: list[str] = field(default_factory=list)
    decision: pb.Decision | None = None
    deltas: list[str] = field(default_factory=list)  # as sent: a delta may carry many tokens
    segments: list[str] = field(default_factory=lambda: [""])  # the text of each attempt
    attempts: list[pb.Attempt] = field(default_factory=list)
    done: pb.CompleteDone | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""

    @property
    def words(self) -> int:
        """Tokens streamed so far, in the fake's measure (one word each)."""
        return len("".join(self.deltas).split())

    @property
    def text(self) -> str:
        """The streamed text, else the text carried by done."""
        return "".join(self.deltas) if self.deltas else (self.done.text if self.done else "")

    def shape(self) -> list[str]:
        """The event kinds with runs of deltas folded: ['decision', 'delta*', 'attempt', ...]."""
        out: list[str] = []
        for k in self.kinds:
            if k == "delta" and out and out[-1] == "delta*":
                continue
            out.append("delta*" if k == "delta" else k)
        return out


def take(seen: Seen, event: pb.CompleteEvent) -> None:
    """Fold one event into what was seen."""
    kind = event.WhichOneof("event")
    assert kind is not None, "an empty CompleteEvent"
    seen.kinds.append(kind)
    if kind == "decision":
        seen.decision = event.decision
    elif kind == "delta":
        seen.deltas.append(event.delta.text)
        seen.segments[-1] += event.delta.text
    elif kind == "attempt":
        seen.attempts.append(event.attempt)
        seen.segments.append("")
    else:
        seen.done = event.done


async def complete(stub: pb_grpc.RouterStub, req: pb.CompleteRequest, *,
                   deadline_s: float | None = 30.0, metadata: Any = None) -> Seen:
    """Run one Complete to its end, under a gRPC deadline of `deadline_s`."""
    seen = Seen()
    call = stub.Complete(req, timeout=deadline_s, metadata=metadata)
    try:
        async for event in call:
            take(seen, event)
    except grpc.aio.AioRpcError as exc:
        seen.code, seen.details = exc.code(), exc.details() or ""
    return seen


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    """Wait for an async or plain predicate to hold (what a background settle writes)."""
    async with asyncio.timeout(timeout_s):
        while True:
            got = predicate()
            if asyncio.iscoroutine(got):
                got = await got
            if got:
                return
            await asyncio.sleep(0.02)
