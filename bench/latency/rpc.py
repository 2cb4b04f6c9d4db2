"""grpc.aio load generator: Route latency and throughput, targets interleaved A/B/A/B.

Standalone: `python -m bench.latency.rpc --target noop=127.0.0.1:PORT [--target other=ADDR ...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.latency.workload import build_requests
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Target:
    """A server to load, with RouteRequest field overrides (e.g. dry_run) for its requests."""

    name: str
    address: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Stats:
    """Raw measurements of one target at one concurrency, summed over its rounds."""

    latencies_ns: list[int] = field(default_factory=list)
    wall_ns: int = 0
    round_p50_us: list[float] = field(default_factory=list)
    round_rps: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    response_bytes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Summary:
    """Latency percentiles (µs) and throughput (req/s) of one target at one concurrency."""

    target: str
    concurrency: int
    calls: int
    p50_us: float
    p99_us: float
    mean_us: float
    rps: float
    errors: int
    round_p50_us: tuple[float, ...]
    round_rps: tuple[float, ...]
    response_bytes: float
    statuses: Mapping[str, int]


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values (q in 0..1)."""
    rank = max(1, -(-int(q * 1000) * len(sorted_values) // 1000))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def _worker(stub: pb_grpc.RouterStub, it: Any, lat: list[int], stats: Stats) -> None:
    for req in it:
        t0 = time.perf_counter_ns()
        try:
            reply = await stub.Route(req)
        except grpc.aio.AioRpcError as exc:
            stats.errors[exc.code().name] += 1
            continue
        lat.append(time.perf_counter_ns() - t0)
        stats.statuses[pb.DecisionStatus.Name(reply.status)] += 1


async def run_round(
    stub: pb_grpc.RouterStub, requests: list[pb.RouteRequest], concurrency: int, stats: Stats
) -> None:
    """Send `requests` with `concurrency` callers on one channel; add timings to `stats`."""
    it = iter(requests)
    lat: list[int] = []
    gc.collect()
    t0 = time.perf_counter_ns()
    await asyncio.gather(*(_worker(stub, it, lat, stats) for _ in range(concurrency)))
    add_round(stats, lat, time.perf_counter_ns() - t0)


def add_round(stats: Stats, lat: list[int], wall_ns: int) -> None:
    """Add one round's latencies and wall time to `stats`, and its own p50 and calls/s."""
    stats.wall_ns += wall_ns
    stats.latencies_ns.extend(lat)
    if lat:
        stats.round_p50_us.append(statistics.median(lat) / 1000)
        stats.round_rps.append(len(lat) / (wall_ns / 1e9))


async def warm_up(
    stub: pb_grpc.RouterStub, target: Target, n: int, concurrency: int, stats: Stats
) -> None:
    """Unrecorded calls to fill caches and connections; records response sizes only."""
    requests = build_requests(n, f"{target.name}-warm-c{concurrency}", **target.overrides)
    it = iter(requests)

    async def one() -> None:
        for req in it:
            reply = await stub.Route(req)
            stats.response_bytes.append(reply.ByteSize())

    await asyncio.gather(*(one() for _ in range(concurrency)))


async def ab_rounds(
    targets: Sequence[Target], requests: int, rounds: int, concurrencies: Sequence[int],
    warmup: int,
) -> dict[tuple[str, int], Stats]:
    """Measure every target at every concurrency, rounds interleaved A/B/A/B then B/A/B/A."""
    channels = {t.name: grpc.aio.insecure_channel(t.address) for t in targets}
    stubs = {name: pb_grpc.RouterStub(ch) for name, ch in channels.items()}
    results = {(t.name, c): Stats() for t in targets for c in concurrencies}
    try:
        for c in concurrencies:
            for t in targets:
                await warm_up(stubs[t.name], t, warmup, c, results[(t.name, c)])
            for r in range(rounds):
                for t in targets if r % 2 == 0 else list(reversed(targets)):
                    reqs = build_requests(requests, f"{t.name}-c{c}-r{r}", **t.overrides)
                    await run_round(stubs[t.name], reqs, c, results[(t.name, c)])
    finally:
        for ch in channels.values():
            await ch.close()
    return results


def summarize(target: str, concurrency: int, stats: Stats) -> Summary:
    """Percentiles and throughput of one target at one concurrency."""
    lat = sorted(stats.latencies_ns)
    n = len(lat)
    sizes = stats.response_bytes
    return Summary(
        target=target, concurrency=concurrency, calls=n,
        p50_us=percentile(lat, 0.50) / 1000 if n else float("nan"),
        p99_us=percentile(lat, 0.99) / 1000 if n else float("nan"),
        mean_us=sum(lat) / n / 1000 if n else float("nan"),
        rps=n / (stats.wall_ns / 1e9) if stats.wall_ns else 0.0,
        errors=sum(stats.errors.values()),
        round_p50_us=tuple(stats.round_p50_us),
        round_rps=tuple(stats.round_rps),
        response_bytes=sum(sizes) / len(sizes) if sizes else 0.0,
        statuses=dict(stats.statuses),
    )


def ratios(subject: Summary, baseline: Summary) -> dict[str, float]:
    """subject / baseline for p50, p99 and throughput."""
    return {
        "p50": subject.p50_us / baseline.p50_us,
        "p99": subject.p99_us / baseline.p99_us,
        "rps": subject.rps / baseline.rps if baseline.rps else float("nan"),
    }


def measure(
    targets: Sequence[Target], requests: int, rounds: int, concurrencies: Sequence[int],
    warmup: int,
) -> list[Summary]:
    """Run the interleaved rounds and summarize each (target, concurrency)."""
    raw = asyncio.run(ab_rounds(targets, requests, rounds, concurrencies, warmup))
    return [summarize(name, c, s) for (name, c), s in raw.items()]


def main() -> None:
    """Command line entry point: load one or more running servers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", required=True, help="NAME=HOST:PORT")
    parser.add_argument("--requests", type=int, default=2000, help="per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, action="append")
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    targets = [Target(*t.split("=", 1)) for t in args.target]
    for s in measure(targets, args.requests, args.rounds, args.concurrency or [1, 32],
                     args.warmup):
        print(f"{s.target:>12} c={s.concurrency:<3} n={s.calls:<6} p50={s.p50_us:8.1f}µs "
              f"p99={s.p99_us:8.1f}µs mean={s.mean_us:8.1f}µs {s.rps:8.0f} req/s "
              f"errors={s.errors} bytes={s.response_bytes:.0f}")


if __name__ == "__main__":
    main()
