"""The response cache: hit rate on a Zipf workload, and what a hit costs next to a Route.

`python -m bench.latency.cache [--quick] [--no-write]` (also part of `make bench`).

One run starts the bundled fake provider and a sidecar (config/router.yaml, every provider
pointed at the fake, the cache on a fresh SQLite store), each its own process on loopback:

1. Execute mode: 1,000 Completes (temperature 0) over 300 distinct prompts, each prompt once
   and the other 700 Zipf-distributed repeats (s=1.1), shuffled with a fixed seed, one at a
   time. Every repeat must be a hit answering the prompt's first text, every first a miss, and
   the fake provider must have been called once per prompt: hit rate == share of repeats.
2. Decision mode: the same over `cache_key`s with Route and ReportOutcome(cache_value).
3. Latency, in one run, the kinds of call interleaved one by one at concurrency 1: a plain
   Route (decided, reserved, audited), a Route answered from the cache, and a Complete answered
   from the cache (whole, and streamed), beside a no-op server answering the same messages
   (the transport's floor). p50 and p99 of each; a hit should cost no more than a Route.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench.latency import tables
from bench.latency.rpc import percentile
from bench.latency.targets import Variant, start_sidecar
from bench.procs import REPO, sidecar_executable, spawn
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"
SECTION = "## Response cache"
ZIPF_S = 1.1
REQUESTS, PROMPTS = 1000, 300
ROUTE, ROUTE_HIT = "Route (no cache_key)", "Route, cache hit (decision mode)"
COMPLETE_HIT, STREAM_HIT = "Complete, cache hit", "Complete, cache hit, streamed"
NOOP_ROUTE, NOOP_COMPLETE = "no-op server: Route", "no-op server: Complete (the hit's events)"
NOOP_STREAM = "no-op server: Complete, streamed (the hit's events)"


@dataclass
class Workload:
    """One mode's pass over the Zipf workload."""

    mode: str
    requests: int
    prompts: int
    hits: int = 0
    misses: int = 0
    false_hits: int = 0
    provider_calls: int = -1  # execute mode: what the fake provider received

    @property
    def repeats(self) -> int:
        """Requests beyond each prompt's first."""
        return self.requests - self.prompts

    @property
    def hit_rate(self) -> float:
        """Hits over requests."""
        return self.hits / self.requests if self.requests else 0.0

    @property
    def exact(self) -> bool:
        """Every repeat a hit, no false hit, one provider call per prompt (execute mode)."""
        calls_ok = self.provider_calls in (-1, self.prompts)
        return self.hits == self.repeats and self.false_hits == 0 and calls_ok


@dataclass
class Latency:
    """p50 / p99 in microseconds of one kind of call."""

    name: str
    calls: int
    p50_us: float
    p99_us: float


@dataclass
class Results:
    """What one run measured."""

    command: str
    date: str
    workloads: list[Workload] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    latency_calls: int = 0
    duration_s: float = 0.0


def zipf_workload(requests: int, prompts: int, seed: int = 7) -> list[int]:
    """Each prompt once, the rest Zipf-distributed repeats, shuffled."""
    rng = random.Random(seed)
    weights = [1 / (rank ** ZIPF_S) for rank in range(1, prompts + 1)]
    seq = list(range(prompts)) + rng.choices(range(prompts), weights, k=requests - prompts)
    rng.shuffle(seq)
    return seq


def _route(i: int, key: str = "") -> pb.RouteRequest:
    return pb.RouteRequest(task_id=f"cache-bench-{i}", task_type="analyze_logs", priority=40,
                           estimated_input_tokens=1200, max_output_tokens=300,
                           labels={"project": "bench", "lane": "triage"}, cache_key=key)


def _complete(i: int, prompt: int, stream: bool = False) -> pb.CompleteRequest:
    return pb.CompleteRequest(
        route=pb.RouteRequest(task_id=f"cache-bench-c{i}", task_type="analyze_logs",
                              priority=40, max_output_tokens=300,
                              labels={"project": "bench", "lane": "triage"}),
        messages=[pb.ChatMessage(role="system", content="You triage recurring errors."),
                  pb.ChatMessage(role="user", content=f"Error signature #{prompt}: what now?")],
        temperature=0.0, stream=stream)


def _value(prompt: int) -> bytes:
    return f"triage of recurring error #{prompt}: rotate the logs, then restart".encode()


async def _run_complete(stub: pb_grpc.RouterStub, req: pb.CompleteRequest
                        ) -> tuple[pb.CompleteDone, str]:
    done, text = pb.CompleteDone(), []
    async for event in stub.Complete(req, timeout=30):
        kind = event.WhichOneof("event")
        if kind == "delta":
            text.append(event.delta.text)
        elif kind == "done":
            done = event.done
    return done, "".join(text) or done.text


async def execute_workload(stub: pb_grpc.RouterStub, fake: str) -> Workload:
    w = Workload("execute (Complete)", REQUESTS, PROMPTS)
    first: dict[int, str] = {}
    async with httpx.AsyncClient(base_url=fake) as http:
        await http.delete("/_fake/requests")
        for i, prompt in enumerate(zipf_workload(REQUESTS, PROMPTS)):
            done, text = await _run_complete(stub, _complete(i, prompt))
            if not done.success:
                raise RuntimeError(f"Complete failed: {done.error}")
            if done.cache_hit:
                w.hits += 1
                w.false_hits += prompt not in first or first[prompt] != text
            else:
                w.misses += 1
                first.setdefault(prompt, text)
        w.provider_calls = len((await http.get("/_fake/requests")).json())
    return w


async def decision_workload(stub: pb_grpc.RouterStub) -> Workload:
    w = Workload("decision (Route + ReportOutcome)", REQUESTS, PROMPTS)
    for i, prompt in enumerate(zipf_workload(REQUESTS, PROMPTS)):
        d = await stub.Route(_route(i, f"error-{prompt}"))
        if d.status == pb.DECISION_STATUS_CACHE_HIT:
            w.hits += 1
            w.false_hits += d.cached_value != _value(prompt)
            continue
        w.misses += 1
        await stub.ReportOutcome(pb.Outcome(
            decision_id=d.decision_id, success=True, cache_value=_value(prompt),
            attempts=[pb.Attempt(model=d.model, status=pb.ATTEMPT_STATUS_SUCCESS,
                                 input_tokens=1200, output_tokens=250)]))
    return w


async def latency(stub: pb_grpc.RouterStub, noop: pb_grpc.RouterStub, calls: int,
                  warmup: int) -> list[Latency]:
    async def noop_route(i: int) -> None:
        await noop.Route(_route(5 * 10**6 + i))

    async def noop_complete(i: int) -> None:
        await _run_complete(noop, _complete(5 * 10**6 + i, 0))

    async def noop_stream(i: int) -> None:
        await _run_complete(noop, _complete(5 * 10**6 + i, 0, stream=True))

    async def route(i: int) -> None:
        await stub.Route(_route(10**6 + i))

    async def route_hit(i: int) -> None:
        await stub.Route(_route(2 * 10**6 + i, "error-0"))

    async def complete_hit(i: int) -> None:
        await _run_complete(stub, _complete(3 * 10**6 + i, 0))

    async def stream_hit(i: int) -> None:
        await _run_complete(stub, _complete(4 * 10**6 + i, 0, stream=True))

    kinds: dict[str, Callable[[int], Any]] = {
        ROUTE: route, ROUTE_HIT: route_hit, COMPLETE_HIT: complete_hit, STREAM_HIT: stream_hit,
        NOOP_ROUTE: noop_route, NOOP_COMPLETE: noop_complete, NOOP_STREAM: noop_stream}
    times: dict[str, list[int]] = {k: [] for k in kinds}
    for i in range(warmup + calls):
        order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
        for name in order:
            t0 = time.perf_counter_ns()
            await kinds[name](i)
            if i >= warmup:
                times[name].append(time.perf_counter_ns() - t0)
    out = []
    for name, lat in times.items():
        lat.sort()
        out.append(Latency(name, len(lat), percentile(lat, 0.5) / 1000,
                           percentile(lat, 0.99) / 1000))
    return out


async def workloads(address: str, fake: str, res: Results) -> str:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.RouterStub(ch)
        res.workloads.append(await execute_workload(stub, fake))
        res.workloads.append(await decision_workload(stub))
        return await capture(stub)


async def latencies(address: str, noop: str, res: Results, warmup: int) -> None:
    async with grpc.aio.insecure_channel(address) as ch, \
            grpc.aio.insecure_channel(noop) as noop_ch:
        res.latencies = await latency(pb_grpc.RouterStub(ch), pb_grpc.RouterStub(noop_ch),
                                      res.latency_calls, warmup)


class _Noop(pb_grpc.RouterServicer):
    """The transport's floor: the sidecar's own answers, replayed with no work behind them."""

    def __init__(self, decision: pb.Decision, whole: list[pb.CompleteEvent],
                 streamed: list[pb.CompleteEvent]) -> None:
        self._decision, self._whole, self._streamed = decision, whole, streamed

    async def Route(self, request: pb.RouteRequest, context: Any) -> pb.Decision:
        return self._decision

    async def Complete(self, request: pb.CompleteRequest, context: Any) -> None:  # type: ignore[override]
        for event in self._streamed if request.stream else self._whole:
            await context.write(event)


async def serve_noop(listen: str, captured: str) -> None:
    """Serve the captured Decision and Complete events until cancelled."""
    doc = json.loads(captured)
    decision = pb.Decision.FromString(bytes.fromhex(doc["decision"]))
    whole, streamed = ([pb.CompleteEvent.FromString(bytes.fromhex(h)) for h in doc[k]]
                       for k in ("whole", "streamed"))
    server = grpc.aio.server()
    pb_grpc.add_RouterServicer_to_server(_Noop(decision, whole, streamed), server)
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


async def capture(stub: pb_grpc.RouterStub) -> str:
    """A real Route's Decision and a real Complete hit's events, for the no-op server."""
    decision = await stub.Route(_route(9 * 10**6))
    whole = [e async for e in stub.Complete(_complete(9 * 10**6, 0), timeout=30)]
    streamed = [e async for e in stub.Complete(_complete(9 * 10**6, 0, stream=True), timeout=30)]
    return json.dumps({"decision": decision.SerializeToString().hex(),
                       "whole": [e.SerializeToString().hex() for e in whole],
                       "streamed": [e.SerializeToString().hex() for e in streamed]})


def _to_fake(fake: str) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        providers = {m["provider"] for m in raw["models"].values()}
        raw["providers"] = {p: {"kind": "openai", "base_url": f"{fake}/v1", "api_key": "none",
                                "max_connections": 64} for p in sorted(providers)}
        raw["cache"] = {"ttl_s": 3600, "max_entries": 100_000}
    return edit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")
        time.sleep(0.02)


def _wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/_fake/requests", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the fake provider at {url} did not answer")
        time.sleep(0.05)


def run(quick: bool, command: str) -> Results:
    """Start the fake provider and a sidecar with the cache on, measure, stop them."""
    t0 = time.perf_counter()
    res = Results(command, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  latency_calls=200 if quick else 500)
    with tempfile.TemporaryDirectory(prefix="routing-cache-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        work = Path(tmp)
        port = _free_port()
        fake = f"http://127.0.0.1:{port}"
        stack.enter_context(spawn([sidecar_executable(), "fake-provider", "--listen",
                                   f"127.0.0.1:{port}"], work / "fake.log"))
        _wait_http(fake)
        variant = Variant("sidecar-cache", "config/router.yaml on the fake provider, cache on",
                          config=_to_fake(fake))
        sidecar = start_sidecar(stack, variant, work, work)
        print(f"response cache: {REQUESTS} Completes and {REQUESTS} Routes over {PROMPTS} "
              f"prompts, then {res.latency_calls} rounds of hits and Routes ...", flush=True)
        captured = work / "captured.hex"
        captured.write_text(asyncio.run(workloads(sidecar.address, fake, res)))
        noop_port = _free_port()
        stack.enter_context(spawn(
            [sys.executable, "-m", "bench.latency.cache", "--serve-noop", f"127.0.0.1:{noop_port}",
             "--captured", str(captured)], work / "noop.log"))
        _wait_port(noop_port)
        asyncio.run(latencies(sidecar.address, f"127.0.0.1:{noop_port}", res,
                              warmup=20 if quick else 100))
    res.duration_s = time.perf_counter() - t0
    return res


def verdicts(res: Results) -> list[str]:
    """The targets, met or not."""
    lines = []
    for w in res.workloads:
        calls = (f", {w.provider_calls} provider calls for {w.prompts} prompts"
                 if w.provider_calls >= 0 else "")
        lines.append(
            f"{w.mode}: hit rate {w.hit_rate:.1%} == share of repeats "
            f"{w.repeats / w.requests:.1%} ({w.hits} hits, {w.false_hits} false{calls}): "
            + ("met" if w.exact else "MISSED"))
    by = {x.name: x for x in res.latencies}
    route, floor_route = by.get(ROUTE), by.get(NOOP_ROUTE)
    floor_whole, floor_stream = by.get(NOOP_COMPLETE), by.get(NOOP_STREAM)
    if route is None or floor_route is None or floor_whole is None or floor_stream is None:
        return lines
    for name, floor in ((ROUTE_HIT, floor_route), (COMPLETE_HIT, floor_whole),
                        (STREAM_HIT, floor_stream)):
        hit = by[name]
        # The sidecar's own time: the call minus what the same answer costs from a no-op
        # server (a Complete is a stream of several messages: its transport costs more).
        own, route_own = hit.p50_us - floor.p50_us, route.p50_us - floor_route.p50_us
        lines.append(
            f"{name}: p50 x{hit.p50_us / route.p50_us:.2f} of a Route's (p99 "
            f"x{hit.p99_us / route.p99_us:.2f}); above its transport floor {own:.0f} µs vs a "
            f"Route's {route_own:.0f} µs: a hit costs no more than a Route: "
            + ("met" if own <= route_own else "MISSED"))
    return lines


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(str(x) for x in line) + " |" for line in lines)


def markdown(res: Results) -> str:
    """The docs/benchmarks.md section."""
    rows = [[x.name, str(x.calls), f"{x.p50_us:.0f}", f"{x.p99_us:.0f}"] for x in res.latencies]
    return f"""\
{SECTION}

- Command: `{res.command}`; date: {res.date}; duration: {res.duration_s:.0f} s

{chr(10).join(f"- {v}" for v in verdicts(res))}

{_table(["call", "calls", "p50 µs", "p99 µs"], rows)}

Method: `bench/latency/cache.py`. The bundled fake provider and one sidecar (config/router.yaml,
every provider pointed at the fake, the cache on a fresh SQLite store), each its own process on
loopback, one grpc.aio client. Workload: {REQUESTS} requests over {PROMPTS} prompts, each once
and the rest Zipf-distributed repeats (s={ZIPF_S}), shuffled with a fixed seed, sent one at a
time; execute mode with Complete at temperature 0 (a repeat's text is compared with its
prompt's first answer, and the fake provider's own request log is counted), decision mode with
Route and ReportOutcome(cache_value). Latency: the kinds of call interleaved one by one at
concurrency 1, after warm-up, percentiles by nearest rank; each Complete is read to its done.
The transport's floor: a no-op gRPC server process (`bench/latency/cache.py --serve-noop`) answering
with a Decision and a hit's events captured from the sidecar, so that a Complete (a stream of
messages) and a Route (one answer) are each compared net of what their transport costs.
"""


def console(res: Results) -> str:
    """The run's figures for the terminal."""
    return markdown(res)


def splice(page: str, section: str) -> str:
    """The page with its cache section replaced (or appended)."""
    return tables.splice(page, SECTION, section)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.latency.cache`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer latency rounds")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    p.add_argument("--output", type=Path, default=BENCHMARKS_MD)
    p.add_argument("--serve-noop", metavar="HOST:PORT", help=argparse.SUPPRESS)
    p.add_argument("--captured", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_noop:  # the harness's own child process: the transport's floor
        asyncio.run(serve_noop(args.serve_noop, args.captured.read_text()))
        return 0
    res = run(args.quick, "python -m bench.latency.cache" + (" --quick" if args.quick else ""))
    print(console(res))
    if not args.no_write:
        page = args.output.read_text() if args.output.exists() else "# Benchmarks\n"
        args.output.write_text(splice(page, markdown(res)))
        print(f"wrote {args.output}")
    return 0 if all(w.exact for w in res.workloads) else 1


if __name__ == "__main__":
    raise SystemExit(main())
