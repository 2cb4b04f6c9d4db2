"""RouteStream load: one bidi stream, a writer keeping up to WINDOW requests in flight.

Standalone: `python -m bench.latency.stream --target sidecar=127.0.0.1:PORT [...]`.

A writer task sends the requests while a reader task collects the answers (they come back in
request order); a semaphore of WINDOW slots keeps the writer at most WINDOW answers ahead, so
the server always has work queued and the stream is pipelined, not one call at a time. Each
stream round is followed by a round of unary Routes at concurrency 1 on the same server, the
yardstick the stream is judged against.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections import deque
from collections.abc import Sequence

import grpc

from bench.latency.rpc import Stats, Summary, Target, add_round, run_round, summarize
from bench.latency.workload import build_requests
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

WINDOW = 64  # requests written and not yet answered, at most


class StreamEnded(Exception):
    """The server closed the stream before answering every request."""


async def stream_round(stub: pb_grpc.RouterStub, requests: Sequence[pb.RouteRequest],
                       window: int, stats: Stats) -> None:
    """Send `requests` on one RouteStream, `window` in flight; add timings to `stats`."""
    call = stub.RouteStream()
    slots = asyncio.Semaphore(window)
    sent_ns: deque[int] = deque()
    lat: list[int] = []
    clock = time.perf_counter_ns

    async def writer() -> None:
        for req in requests:
            await slots.acquire()
            sent_ns.append(clock())
            await call.write(req)
        await call.done_writing()

    async def reader() -> None:
        for _ in requests:
            reply = await call.read()
            if reply is grpc.aio.EOF:
                raise StreamEnded
            lat.append(clock() - sent_ns.popleft())
            slots.release()
            stats.statuses[pb.DecisionStatus.Name(reply.status)] += 1

    gc.collect()
    t0 = clock()
    try:  # the first task to fail cancels the other, so a broken stream cannot hang a round
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer())
            tg.create_task(reader())
    except* grpc.aio.AioRpcError as group:
        first = group.exceptions[0]
        stats.errors[first.code().name if isinstance(first, grpc.aio.AioRpcError) else "?"] += 1
    except* StreamEnded:
        stats.errors["ended before the last answer"] += 1
    finally:
        call.cancel()
    add_round(stats, lat, clock() - t0)


async def stream_rounds(targets: Sequence[Target], requests: int, rounds: int, window: int,
                        warmup: int, unary: int) -> dict[tuple[str, int], Stats]:
    """Every target's stream rounds, each followed by a unary round of `unary` calls at
    concurrency 1 on the same server, targets interleaved A/B/A/B then B/A/B/A.

    Keyed (name, window) for the stream and (name, 1) for unary: the ratio of the two is
    taken over rounds that alternate, so machine noise weighs on both alike.
    """
    channels = {t.name: grpc.aio.insecure_channel(t.address) for t in targets}
    stubs = {name: pb_grpc.RouterStub(ch) for name, ch in channels.items()}
    results = {(t.name, c): Stats() for t in targets for c in (window, 1)}
    try:
        for t in targets:
            warm = build_requests(warmup, f"{t.name}-stream-warm", **t.overrides)
            await stream_round(stubs[t.name], warm, window, Stats())
        for r in range(rounds):
            for t in targets if r % 2 == 0 else list(reversed(targets)):
                reqs = build_requests(requests, f"{t.name}-stream-r{r}", **t.overrides)
                await stream_round(stubs[t.name], reqs, window, results[(t.name, window)])
                reqs = build_requests(unary, f"{t.name}-stream-unary-r{r}", **t.overrides)
                await run_round(stubs[t.name], reqs, 1, results[(t.name, 1)])
    finally:
        for ch in channels.values():
            await ch.close()
    return results


def measure_stream(targets: Sequence[Target], requests: int, rounds: int, warmup: int,
                   unary: int, window: int = WINDOW) -> list[Summary]:
    """Run the stream rounds; a Summary per target for its stream (concurrency = the window)
    and one for the unary Route rounds at concurrency 1 interleaved with them."""
    raw = asyncio.run(stream_rounds(targets, requests, rounds, window, warmup, unary))
    return [summarize(name, c, s) for (name, c), s in raw.items()]


def main() -> None:
    """Command line entry point: load one or more running servers over RouteStream."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", required=True, help="NAME=HOST:PORT")
    parser.add_argument("--requests", type=int, default=2000, help="per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--unary", type=int, default=500, help="unary calls after each round")
    args = parser.parse_args()
    targets = [Target(*t.split("=", 1)) for t in args.target]
    for s in measure_stream(targets, args.requests, args.rounds, args.warmup, args.unary,
                            args.window):
        kind = f"stream, window {s.concurrency}" if s.concurrency > 1 else "unary, c=1"
        print(f"{s.target:>12} {kind:<18} n={s.calls:<6} {s.rps:8.0f} "
              f"decisions/s p50={s.p50_us:8.1f}µs p99={s.p99_us:8.1f}µs errors={s.errors}")


if __name__ == "__main__":
    main()
