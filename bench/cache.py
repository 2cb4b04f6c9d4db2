"""The response cache: hit rate on a Zipf workload, and what a hit costs next to a Route.

`python -m bench.cache [--requests 1000] [--prompts 300] [--latency-calls 500]` (also part of
`make bench`). One sidecar process (a fresh SQLite store) and one grpc.aio client:

1. Workload: `requests` decision-mode tasks over `prompts` distinct cache keys: each key once,
   the rest repeats drawn Zipf (s=1.1) over the keys, shuffled with a fixed seed. A miss is
   reported with `cache_value` (so the next repeat can hit); a hit's value must be its key's.
   Every repeat must be a hit and nothing else: hit rate == share of repeats, no false hit.
2. Latency, in one run, calls interleaved one by one at concurrency 1: a plain Route (no
   cache_key: decided, reserved, audited) and a Route answered from the cache (looked up,
   audited as CACHE_HIT, nothing reserved). p50 and p99 of each, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.rpc import percentile
from bench.targets import Variant, start_sidecar
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

ZIPF_S = 1.1


def _cache_config(raw: dict[str, Any]) -> None:
    raw["cache"] = {"ttl_s": 3600, "max_entries": 100_000}


VARIANT = Variant("sidecar-cache", "config/router.yaml with the response cache (SQLite)",
                  config=_cache_config)


@dataclass
class Latency:
    """p50 / p99 in microseconds of one kind of call."""

    name: str
    calls: int
    p50_us: float
    p99_us: float


@dataclass
class CacheBench:
    """What one run measured."""

    requests: int
    prompts: int
    repeats: int
    hits: int = 0
    misses: int = 0
    false_hits: int = 0
    stored: int = 0
    latencies: list[Latency] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        """Hits over requests."""
        return self.hits / self.requests if self.requests else 0.0

    @property
    def repeat_share(self) -> float:
        """Repeats over requests: what the hit rate must equal."""
        return self.repeats / self.requests if self.requests else 0.0


def zipf_workload(requests: int, prompts: int, seed: int) -> list[int]:
    """Each prompt once, the rest Zipf-distributed repeats, shuffled."""
    rng = random.Random(seed)
    weights = [1 / (rank ** ZIPF_S) for rank in range(1, prompts + 1)]
    seq = list(range(prompts)) + rng.choices(range(prompts), weights, k=requests - prompts)
    rng.shuffle(seq)
    return seq


def route_request(i: int, key: str = "") -> pb.RouteRequest:
    return pb.RouteRequest(task_id=f"cache-bench-{i}", task_type="analyze_logs", priority=40,
                           estimated_input_tokens=1200, max_output_tokens=300,
                           labels={"project": "bench", "lane": "triage"}, cache_key=key)


def value_of(prompt: int) -> bytes:
    return f"triage of recurring error #{prompt}: rotate the logs, then restart".encode()


async def workload(stub: pb_grpc.RouterStub, res: CacheBench, seed: int) -> None:
    for i, prompt in enumerate(zipf_workload(res.requests, res.prompts, seed)):
        d = await stub.Route(route_request(i, f"error-{prompt}"))
        if d.status == pb.DECISION_STATUS_CACHE_HIT:
            res.hits += 1
            res.false_hits += d.cached_value != value_of(prompt)
            continue
        res.misses += 1
        ack = await stub.ReportOutcome(pb.Outcome(
            decision_id=d.decision_id, success=True, cache_value=value_of(prompt),
            attempts=[pb.Attempt(model=d.model, status=pb.ATTEMPT_STATUS_SUCCESS,
                                 input_tokens=1200, output_tokens=250)]))
        res.stored += ack.cache_stored


async def latency(stub: pb_grpc.RouterStub, calls: int, warmup: int) -> list[Latency]:
    kinds = {"Route (no cache_key)": lambda i: route_request(10**6 + i),
             "Route, cache hit": lambda i: route_request(2 * 10**6 + i, "error-0")}
    times: dict[str, list[int]] = {k: [] for k in kinds}
    for i in range(warmup + calls):
        order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
        for name in order:
            req = kinds[name](i)
            t0 = time.perf_counter_ns()
            await stub.Route(req)
            if i >= warmup:
                times[name].append(time.perf_counter_ns() - t0)
    out = []
    for name, lat in times.items():
        lat.sort()
        out.append(Latency(name, len(lat), percentile(lat, 0.5) / 1000,
                           percentile(lat, 0.99) / 1000))
    return out


async def measure(address: str, res: CacheBench, latency_calls: int, seed: int) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.RouterStub(ch)
        await workload(stub, res, seed)
        res.latencies = await latency(stub, latency_calls, warmup=min(100, latency_calls))


def run_cache_bench(work: Path, store_dir: Path, requests: int = 1000, prompts: int = 300,
                    latency_calls: int = 500, seed: int = 7) -> CacheBench:
    """Start a sidecar with the cache on, run both phases, stop it."""
    res = CacheBench(requests, prompts, requests - prompts)
    with contextlib.ExitStack() as stack:
        sidecar = start_sidecar(stack, VARIANT, work, store_dir)
        asyncio.run(measure(sidecar.address, res, latency_calls, seed))
    return res


def verdicts(res: CacheBench) -> list[str]:
    """The targets, met or not."""
    by = {x.name: x for x in res.latencies}
    route, hit = by.get("Route (no cache_key)"), by.get("Route, cache hit")
    lines = [
        f"hit rate {res.hit_rate:.1%} == share of repeats {res.repeat_share:.1%}, no false hit: "
        + ("met" if res.hits == res.repeats and res.false_hits == 0 else
           f"MISSED ({res.hits} hits, {res.repeats} repeats, {res.false_hits} false)"),
    ]
    if route and hit:
        ok = hit.p50_us <= route.p50_us and hit.p99_us <= route.p99_us * 1.1
        lines.append(f"a hit costs no more than a Route: p50 x{hit.p50_us / route.p50_us:.2f}, "
                     f"p99 x{hit.p99_us / route.p99_us:.2f}: " + ("met" if ok else "MISSED"))
    return lines


def rows(res: CacheBench) -> list[list[str]]:
    return [[x.name, str(x.calls), f"{x.p50_us:.0f}", f"{x.p99_us:.0f}"] for x in res.latencies]


HEAD = ["call", "calls", "p50 µs", "p99 µs"]


def markdown(res: CacheBench) -> str:
    """The docs/benchmarks.md section."""
    from bench.report import md_table  # here: bench.report imports this module

    return f"""\
## Response cache

{chr(10).join(f"- {v}" for v in verdicts(res))}

Workload: {res.requests} decision-mode Routes over {res.prompts} distinct cache keys ({res.repeats}
Zipf-distributed repeats, s={ZIPF_S}): {res.hits} hits, {res.misses} misses, {res.stored} values
stored, {res.false_hits} false hits.

{md_table(HEAD, rows(res))}

Method: `bench/cache.py`. One sidecar process with the cache on a fresh SQLite store, one
grpc.aio client. Each miss is reported with its `cache_value` before the next request, so the
next repeat of its key can hit; a hit's value is compared with its key's. Latency: the two
kinds of call interleaved one by one at concurrency 1 (after warm-up), percentiles by nearest
rank.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--prompts", type=int, default=300)
    p.add_argument("--latency-calls", type=int, default=500)
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routing-cache-bench-") as tmp:
        work = Path(tmp)
        res = run_cache_bench(work, work, args.requests, args.prompts, args.latency_calls,
                              args.seed)
    print(markdown(res))
    return 0 if res.hits == res.repeats and res.false_hits == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
