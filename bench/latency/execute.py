"""Execute-mode overhead: Complete through the sidecar vs the same call straight to the provider.

`python -m bench.latency.execute [--quick] [--no-write]` (also part of `make bench`).

One run starts the bundled fake provider and a sidecar (each its own process, on loopback) and
sends the same streamed chat completion both ways, interleaved round by round: through the
sidecar's Complete (decide, reserve, audit, call the provider, stream the deltas over gRPC,
settle and record) and directly to the fake provider with httpx and httpx-sse (the same
client libraries the sidecar's adapter uses). Two payloads (`SCENARIOS`): 64 tokens at once (the
sidecar's own cost shows), and a first token after 50 ms then 32 at 400 tokens/s (a fast hosted
model). Concurrency 1 and 32. Self-contained: nothing here is shared with the latency
harness, so either can move without the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml
from httpx_sse import EventSource

from bench.latency import tables
from bench.procs import REPO
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"
SECTION = "## Execute mode: Complete vs calling the provider directly"
MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name a few things found near a river, and say why."},
]
TTFT_TARGET_US = 1000.0  # added to the first token at p50
THROUGHPUT_TARGET = 0.9  # sidecar tokens/s over direct, per stream


@dataclass(frozen=True)
class Scenario:
    """One payload: the fake's script (its model name) and the policy routing to it."""

    name: str
    upstream: str
    policy: str
    description: str
    share: float = 1.0  # of the run's calls per round (slow payloads take fewer)


SCENARIOS = (
    Scenario("unpaced", "fake-tokens-64", "unpaced",
             "64 tokens at once, as fast as the fake provider sends them: the worst case, "
             "where only the sidecar's own work shows"),
    Scenario("paced", "fake-slow-50-tokens-32-tps-400", "paced",
             "the first token after 50 ms, then 32 tokens at 400 tokens/s: a fast hosted "
             "model", share=0.5),
)


@dataclass
class Calls:
    """Per-call measurements (ns since the call started) of one target in one cell."""

    ttft_ns: list[int] = field(default_factory=list)
    total_ns: list[int] = field(default_factory=list)
    stream_ns: list[int] = field(default_factory=list)  # first token to last token
    last_ns: list[int] = field(default_factory=list)  # request to last token
    tokens: list[int] = field(default_factory=list)
    wall_ns: int = 0
    errors: int = 0


@dataclass(frozen=True)
class Row:
    """One (scenario, concurrency, target) summary; latencies in µs."""

    scenario: str
    concurrency: int
    target: str
    calls: int
    ttft_p50: float
    ttft_p99: float
    total_p50: float
    total_p99: float
    last_p50: float
    stream_tps: float  # median per-stream tokens/s, first to last token
    aggregate_tps: float  # every token of the cell over its wall time
    errors: int


@dataclass
class Results:
    """What one run measured, and how."""

    command: str
    date: str
    settings: dict[str, object]
    rows: list[Row] = field(default_factory=list)
    route_p50_us: dict[int, float] = field(default_factory=dict)
    duration_s: float = 0.0


# --- processes -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin() -> str:
    return str(Path(sys.executable).parent / "routing-sidecar")


@contextlib.contextmanager
def _process(argv: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(list(argv), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0
               ) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {port}: {log.read_text()[-2000:]}")


def sidecar_config(work: Path, fake_url: str, listen: str) -> Path:
    """One model per scenario, each alone in its policy, on the fake provider."""
    models = {
        s.policy: {"provider": "fake", "upstream_model": s.upstream, "tier": 1,
                   "input_per_mtok": 0.25, "output_per_mtok": 2.0, "context_window": 128_000,
                   "tokens_per_s": 400, "quality": 0.8}
        for s in SCENARIOS
    }
    raw = {
        "server": {"listen": listen, "grace_period_s": 1},
        "store": {"path": str(work / "execute.db")},
        "telemetry": {"exporter": "none", "admin_listen": ""},
        "providers": {"fake": {"kind": "openai", "base_url": f"{fake_url}/v1",
                               "api_key": "none", "max_connections": 64}},
        "models": models,
        "policies": {name: {"models": [name], "fallbacks": 0} for name in models},
        "default_policy": SCENARIOS[0].policy,
        "budgets": [{"scope": "global", "period": "day", "limit_usd": 1_000_000}],
    }
    path = work / "execute.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class _NoopRouter(pb_grpc.RouterServicer):
    """Answers every Complete with a canned decision, 64 one-token deltas and done."""

    def __init__(self) -> None:
        self._events = [pb.CompleteEvent(decision=pb.Decision(
            decision_id="0" * 32, model="noop", provider="noop", reason="canned " * 20))]
        self._events += [pb.CompleteEvent(delta=pb.TextDelta(text=" word")) for _ in range(64)]
        self._events.append(pb.CompleteEvent(done=pb.CompleteDone(success=True,
                                                                  output_tokens=64)))

    async def Complete(self, request: pb.CompleteRequest, context: Any) -> Any:
        for event in self._events:
            await context.write(event)


async def serve_noop(listen: str) -> None:
    """The transport floor: a grpc.aio server streaming canned Complete events, until killed."""
    server = grpc.aio.server()
    pb_grpc.add_RouterServicer_to_server(_NoopRouter(), server)
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


# --- the two ways to make the call -------------------------------------------------------------

def _request(s: Scenario, i: int) -> pb.CompleteRequest:
    return pb.CompleteRequest(
        route=pb.RouteRequest(task_id=f"bench-{i}", task_type="bench", policy=s.policy,
                              labels={"project": "bench"}),
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES],
        stream=True)


def _body(s: Scenario) -> dict[str, Any]:
    # What the sidecar's OpenAI adapter sends for this request (providers/openai.py).
    return {"model": s.upstream, "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}


async def via_sidecar(stub: pb_grpc.RouterStub, s: Scenario, i: int, out: Calls) -> None:
    """One Complete, streamed: first delta, last delta, done."""
    t0 = time.perf_counter_ns()
    first = last = 0
    tokens = 0
    ok = False
    async for event in stub.Complete(_request(s, i), timeout=60):
        kind = event.WhichOneof("event")
        if kind == "delta":  # one or more tokens: the sidecar joins what arrives meanwhile
            last = time.perf_counter_ns()
            first = first or last
        elif kind == "done":
            ok, tokens = event.done.success, event.done.output_tokens
    end = time.perf_counter_ns()
    _add(out, ok and tokens > 0, t0, first, last, end, tokens)


async def direct(client: httpx.AsyncClient, s: Scenario, out: Calls) -> None:
    """The same call to the fake provider with httpx: first content chunk, last, [DONE]."""
    t0 = time.perf_counter_ns()
    first = last = 0
    tokens = 0
    ok = False
    async with client.stream("POST", "/v1/chat/completions", json=_body(s),
                             headers={"accept": "text/event-stream"}) as resp:
        async for sse in EventSource(resp).aiter_sse():
            if sse.data == "[DONE]":
                ok = True
                continue
            chunk = json.loads(sse.data)
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    last = time.perf_counter_ns()
                    first = first or last
                    tokens += 1
    end = time.perf_counter_ns()
    _add(out, ok and tokens > 0, t0, first, last, end, tokens)


def _add(out: Calls, ok: bool, t0: int, first: int, last: int, end: int, tokens: int) -> None:
    if not ok:
        out.errors += 1
        return
    out.ttft_ns.append(first - t0)
    out.total_ns.append(end - t0)
    out.stream_ns.append(last - first)
    out.last_ns.append(last - t0)
    out.tokens.append(tokens)


async def _load(make_call: Any, calls: int, concurrency: int, out: Calls) -> None:
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            try:
                await make_call(i, out)
            except (grpc.RpcError, httpx.HTTPError):
                out.errors += 1

    t0 = time.perf_counter_ns()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.wall_ns += time.perf_counter_ns() - t0


async def _route_p50(stub: pb_grpc.RouterStub, s: Scenario, calls: int, concurrency: int
                     ) -> float:
    """Route alone for the same task: what deciding costs over gRPC, for comparison."""
    lat: list[int] = []

    async def one(i: int, _: Calls) -> None:
        t0 = time.perf_counter_ns()
        await stub.Route(_request(s, i).route, timeout=10)
        lat.append(time.perf_counter_ns() - t0)

    await _load(one, calls, concurrency, Calls())
    return _pct(lat, 50) / 1000


async def measure(sidecar: str, fake_url: str, noop: str, calls: dict[int, int], rounds: int,
                  warmup: int) -> tuple[list[Row], dict[int, float]]:
    """Every scenario x concurrency, direct and sidecar interleaved round by round.

    The first payload also runs against the no-op gRPC server: what any streamed gRPC hop
    from this client costs, the floor under the sidecar's figures.
    """
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    rows: list[Row] = []
    route: dict[int, float] = {}
    async with httpx.AsyncClient(base_url=fake_url, limits=limits, timeout=60) as client, \
            grpc.aio.insecure_channel(sidecar) as channel, \
            grpc.aio.insecure_channel(noop) as noop_channel:
        stub = pb_grpc.RouterStub(channel)
        noop_stub = pb_grpc.RouterStub(noop_channel)
        for s in SCENARIOS:
            for conc, all_calls in calls.items():
                n = max(conc, round(all_calls * s.share))
                makers = {
                    "direct": lambda i, out, s=s: direct(client, s, out),
                    "sidecar": lambda i, out, s=s: via_sidecar(stub, s, i, out),
                }
                if s is SCENARIOS[0]:
                    makers["grpc-noop"] = lambda i, out, s=s: via_sidecar(noop_stub, s, i, out)
                cells = {name: Calls() for name in makers}
                for make in makers.values():  # warm both paths and their pools
                    await _load(make, warmup, conc, Calls())
                for r in range(rounds):
                    order = list(makers) if r % 2 == 0 else list(reversed(makers))
                    for name in order:
                        await _forget(client)
                        gc.collect()
                        await _load(makers[name], n, conc, cells[name])
                rows += [_row(s.name, conc, name, c) for name, c in cells.items()]
                if s is SCENARIOS[0]:
                    route[conc] = await _route_p50(stub, s, n, conc)
    return rows, route


async def _forget(client: httpx.AsyncClient) -> None:
    # The fake keeps a record of every request and updates it per token by a linear search
    # through the records (up to 10,000): cleared before every batch, that stays cheap and
    # the same for both targets.
    (await client.delete("/_fake/requests")).raise_for_status()


def _pct(values: Sequence[int], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[k])


def _row(scenario: str, conc: int, target: str, c: Calls) -> Row:
    rates = sorted((t - 1) / (ns / 1e9) for t, ns in zip(c.tokens, c.stream_ns, strict=True)
                   if ns > 0 and t > 1)
    median_rate = rates[len(rates) // 2] if rates else float("nan")
    aggregate = sum(c.tokens) / (c.wall_ns / 1e9) if c.wall_ns else float("nan")
    return Row(scenario, conc, target, len(c.total_ns), _pct(c.ttft_ns, 50) / 1000,
               _pct(c.ttft_ns, 99) / 1000, _pct(c.total_ns, 50) / 1000,
               _pct(c.total_ns, 99) / 1000, _pct(c.last_ns, 50) / 1000, median_rate, aggregate,
               c.errors)


# --- report ------------------------------------------------------------------------------------

def _pair(rows: Sequence[Row]) -> Iterator[tuple[Row, Row]]:
    by = {(r.scenario, r.concurrency, r.target): r for r in rows}
    for r in rows:
        if r.target == "direct":
            yield r, by[(r.scenario, r.concurrency, "sidecar")]


def floor_notes(res: Results) -> list[str]:
    """How much of the added first-token time any streamed gRPC hop costs this client."""
    by = {(r.scenario, r.concurrency, r.target): r for r in res.rows}
    out = []
    for (scenario, conc, target), noop in sorted(by.items()):
        if target != "grpc-noop":
            continue
        d, s = by[(scenario, conc, "direct")], by[(scenario, conc, "sidecar")]
        out.append(f"{scenario} c={conc}: a no-op gRPC server's first delta p50 "
                   f"{noop.ttft_p50:.0f} µs; sidecar minus direct {s.ttft_p50 - d.ttft_p50:.0f} "
                   f"µs, of which beyond that hop about "
                   f"{s.ttft_p50 - d.ttft_p50 - noop.ttft_p50:.0f} µs")
    return out


def verdicts(res: Results) -> list[str]:
    """The issue's aims, judged on this run (not assertions)."""
    out = []
    for d, s in _pair(res.rows):
        added = s.ttft_p50 - d.ttft_p50
        ok = "meets" if added < TTFT_TARGET_US else "MISSES"
        out.append(f"added to first token p50, {d.scenario} c={d.concurrency}: "
                   f"{added:.0f} µs (aim < {TTFT_TARGET_US:.0f} µs): {ok}")
        ratio = s.stream_tps / d.stream_tps
        ok = "meets" if ratio >= THROUGHPUT_TARGET else "MISSES"
        out.append(f"tokens/s per stream, {d.scenario} c={d.concurrency}: sidecar "
                   f"{s.stream_tps:.0f} vs direct {d.stream_tps:.0f} = {ratio:.2f}x "
                   f"(aim >= {THROUGHPUT_TARGET:.2f}x): {ok}")
    return out


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(res: Results) -> str:
    """The execute-mode section of docs/benchmarks.md."""
    head = ["payload", "conc", "target", "calls", "first token p50 µs", "p99 µs",
            "last token p50 µs", "total p50 µs", "p99 µs", "tok/s per stream",
            "tok/s all streams", "errors"]
    body = [[r.scenario, str(r.concurrency), r.target, str(r.calls), f"{r.ttft_p50:.0f}",
             f"{r.ttft_p99:.0f}", f"{r.last_p50:.0f}", f"{r.total_p50:.0f}",
             f"{r.total_p99:.0f}", f"{r.stream_tps:.0f}", f"{r.aggregate_tps:.0f}",
             str(r.errors)] for r in res.rows]
    added_head = ["payload", "conc", "first token p50", "first token p99", "total p50",
                  "total p99", "tok/s per stream, sidecar / direct"]
    added = [[d.scenario, str(d.concurrency), f"{s.ttft_p50 - d.ttft_p50:+.0f} µs",
              f"{s.ttft_p99 - d.ttft_p99:+.0f} µs", f"{s.total_p50 - d.total_p50:+.0f} µs",
              f"{s.total_p99 - d.total_p99:+.0f} µs", f"{s.stream_tps / d.stream_tps:.2f}x"]
             for d, s in _pair(res.rows)]
    route = ", ".join(f"c={c}: {p:.0f} µs" for c, p in sorted(res.route_p50_us.items()))
    st = res.settings
    return "\n".join([
        SECTION, "",
        f"Generated by `bench/latency/execute.py` ({res.command}, {res.date}, "
        f"{res.duration_s:.0f} s).",
        "", "Aims (not assertions):", "",
        *(f"- {v}" for v in verdicts(res)), "",
        "What the sidecar adds (sidecar minus direct, same run):", "",
        _table(added_head, added), "",
        _table(head, body), "",
        f"For scale, Route alone for the same task over the same channel, p50: {route}. "
        "The no-op gRPC server (`grpc-noop`, `bench/latency/execute.py --serve-noop`) streams a "
        "canned decision, 64 one-token deltas and done for every Complete: the cost of the gRPC "
        "hop itself from this client, which the direct call does not pay:", "",
        *(f"- {n}" for n in floor_notes(res)), "",
        "Method: the bundled fake provider (`routing-sidecar fake-provider`) and a sidecar run "
        "as processes on 127.0.0.1; the harness (one Python process, grpc.aio and httpx) "
        "sends the same streamed chat completion (same messages, same fake script, OpenAI "
        "wire format) through the sidecar's `Complete` (stream=true: decide, reserve and "
        "audit, call the provider, stream the deltas over gRPC (the tokens that arrive while "
        "one is being written go out together), settle and record, `done`) "
        "and straight to the fake with httpx + httpx-sse, parsing every chunk as the "
        "sidecar's adapter does. Per payload and concurrency: "
        f"{st['warmup']} warm-up calls each way, then {st['rounds']} rounds of "
        f"{st['calls_c1']} calls (c=1) or {st['calls_c32']} (c=32) each way (half as many "
        "for the paced payload), the order reversed every other round. Payloads: "
        + "; ".join(f"`{s.name}`: {s.description} (`{s.upstream}`)" for s in SCENARIOS)
        + ". First token: request sent to the first text delta "
        "received; total: to `done` (sidecar, after its outcome is recorded) or `[DONE]` "
        "(direct); tokens/s per stream: (tokens - 1) / (last delta - first delta), median; "
        "all streams: every token over the summed wall time. The sidecar's SQLite store, "
        "budgets and group commit are on, telemetry off. The three processes share the "
        "machine's cores, so the sidecar's work competes with the client's and the fake's.",
        "",
    ])


def console(res: Results) -> str:
    """The rows and aims, for the terminal."""
    lines = [f"{'payload':<8} {'c':>3} {'target':<8} {'calls':>5} {'ttft50':>8} {'ttft99':>8} "
             f"{'last50':>8} {'tot50':>8} {'tot99':>8} {'tok/s':>7} {'all':>7} {'err':>3}"]
    lines += [f"{r.scenario:<8} {r.concurrency:>3} {r.target:<8} {r.calls:>5} "
              f"{r.ttft_p50:>8.0f} {r.ttft_p99:>8.0f} {r.last_p50:>8.0f} {r.total_p50:>8.0f} "
              f"{r.total_p99:>8.0f} {r.stream_tps:>7.0f} {r.aggregate_tps:>7.0f} {r.errors:>3}"
              for r in res.rows]
    route = ", ".join(f"c={c}: {p:.0f} µs" for c, p in sorted(res.route_p50_us.items()))
    return "\n".join([*lines, "", f"Route alone, p50: {route}", *floor_notes(res),
                      *verdicts(res)])


def splice(page: str, section: str) -> str:
    """The page with its execute-mode section replaced (or appended)."""
    return tables.splice(page, SECTION, section)


# --- running it --------------------------------------------------------------------------------

def settings_for(quick: bool) -> dict[str, int]:
    """Calls per round per concurrency, rounds and warm-up."""
    if quick:
        return {"calls_c1": 30, "calls_c32": 128, "rounds": 2, "warmup": 10}
    return {"calls_c1": 100, "calls_c32": 640, "rounds": 4, "warmup": 40}


def run(quick: bool, command: str) -> Results:
    """Start the fake and the sidecar, measure, stop them."""
    t0 = time.perf_counter()
    st = settings_for(quick)
    res = Results(command=command, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  settings=dict(st))
    with tempfile.TemporaryDirectory(prefix="routing-exec-bench-") as tmp:
        work = Path(tmp)
        fake_port, side_port = _free_port(), _free_port()
        fake_url, listen = f"http://127.0.0.1:{fake_port}", f"127.0.0.1:{side_port}"
        config = sidecar_config(work, fake_url, listen)
        noop_port = _free_port()
        noop = f"127.0.0.1:{noop_port}"
        with _process([_bin(), "fake-provider", "--listen", f"127.0.0.1:{fake_port}"],
                      work / "fake.log") as fake, \
                _process([_bin(), "serve", "--config", str(config), "--log-level", "WARNING"],
                         work / "sidecar.log") as side, \
                _process([sys.executable, "-m", "bench.latency.execute", "--serve-noop", noop],
                         work / "noop.log") as noop_proc:
            _wait_port(fake_port, fake, work / "fake.log")
            _wait_port(side_port, side, work / "sidecar.log")
            _wait_port(noop_port, noop_proc, work / "noop.log")
            print(f"execute mode: fake provider {fake_url}, sidecar {listen}; "
                  f"{st['rounds']} rounds x ({st['calls_c1']} calls at c=1, "
                  f"{st['calls_c32']} at c=32) per payload ...", flush=True)
            res.rows, res.route_p50_us = asyncio.run(measure(
                listen, fake_url, noop, {1: st["calls_c1"], 32: st["calls_c32"]},
                st["rounds"], st["warmup"]))
    res.duration_s = time.perf_counter() - t0
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.latency.execute`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    p.add_argument("--output", type=Path, default=BENCHMARKS_MD)
    p.add_argument("--serve-noop", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_noop:  # the harness's own child process: the gRPC floor
        asyncio.run(serve_noop(args.serve_noop))
        return 0
    command = "python -m bench.latency.execute" + (" --quick" if args.quick else "")
    res = run(args.quick, command)
    print(console(res))
    if not args.no_write:
        page = args.output.read_text() if args.output.exists() else "# Benchmarks\n"
        args.output.write_text(splice(page, markdown(res)))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
