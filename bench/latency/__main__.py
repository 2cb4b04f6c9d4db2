"""Run every latency benchmark in one go, print the headline first, write docs/benchmarks.md.

`python -m bench.latency [--quick] [--requests N] [--store-path DIR]` (also `make bench`;
`python -m bench.run` is the same). Progress goes to stderr, the figures to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from bench.latency import cache, execute, instructions, phases, report, tables
from bench.latency.core import run_core
from bench.latency.footprint import REST_S, measure_footprint
from bench.latency.rpc import Target, measure
from bench.latency.startup import noop_cold_start, sidecar_cold_start
from bench.latency.stream import WINDOW, measure_stream
from bench.latency.targets import (
    BUDGET_HEADROOM,
    QUICK_VARIANTS,
    VARIANTS,
    Running,
    Variant,
    sink_log,
    spans_received,
    start_noop,
    start_sidecar,
)
from bench.latency.workload import MIX, PROJECTS, make_request, representative_decision
from bench.procs import REPO, memory_kib
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line options; --quick shrinks every phase."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run (under ~60 s)")
    p.add_argument("--requests", type=int, help="calls per round (default 750, quick 250)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 6, quick 2)")
    p.add_argument("--stream-requests", type=int,
                   help="RouteStream requests per round (default 3000, quick 600)")
    p.add_argument("--footprint", type=int, nargs=2, metavar=("FIRST", "SECOND"),
                   help="Routes before and between the footprint snapshots "
                        "(default 5000 20000, quick 1000 3000)")
    p.add_argument("--core-calls", type=int, help="decide() calls (default 20000, quick 5000)")
    p.add_argument("--store-path", type=Path,
                   help="directory for the sidecars' SQLite files (default: a temp dir)")
    p.add_argument("--variants", help="comma-separated variant names (default: all; quick: "
                   f"{','.join(QUICK_VARIANTS)}); known: {', '.join(v.name for v in VARIANTS)}")
    p.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    p.add_argument("--no-execute", action="store_true",
                   help="skip the execute-mode phase (bench/latency/execute.py)")
    p.add_argument("--no-cache", action="store_true",
                   help="skip the response cache phase (bench/latency/cache.py)")
    p.add_argument("--phase-calls", type=int,
                   help="Routes timed step by step (default 5000, quick 2000)")
    p.add_argument("--no-phases", action="store_true",
                   help="skip timing a Route's steps in one process (bench/latency/phases.py)")
    p.add_argument("--instruction-routes", type=int,
                   help="Routes counted under callgrind per server (default 300, quick 100)")
    p.add_argument("--no-instructions", action="store_true",
                   help="skip counting instructions per Route (bench/latency/instructions.py)")
    args = p.parse_args(argv)
    args.instruction_routes = args.instruction_routes or (100 if args.quick else 300)
    args.requests = args.requests or (250 if args.quick else 750)
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.stream_requests = args.stream_requests or (600 if args.quick else 3000)
    args.stream_rounds = 2 if args.quick else 4
    args.footprint = args.footprint or ((1_000, 3_000) if args.quick else (5_000, 20_000))
    args.core_calls = args.core_calls or (5_000 if args.quick else 20_000)
    args.warmup = 100 if args.quick else 200
    args.phase_calls = args.phase_calls or (2_000 if args.quick else 5_000)
    # A start is short and the machine's noise is not: the median of a few more.
    args.startup_repeats = 3 if args.quick else 9
    return args


def pick_variants(spec: str | None, quick: bool) -> list[Variant]:
    """The variants named in `spec`, else all (quick: QUICK_VARIANTS)."""
    if not spec:
        return [v for v in VARIANTS if not quick or v.name in QUICK_VARIANTS]
    by_name = {v.name: v for v in VARIANTS}
    unknown = [n for n in spec.split(",") if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {sorted(by_name)}")
    return [by_name[n] for n in spec.split(",")]


def capture_decision(address: str, out: Path) -> dict[str, int]:
    """Ask the sidecar once per task kind; save the Decision nearest the mix's mean size."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RouterStub(channel)
        replies = {k.task_type: stub.Route(make_request(k, f"capture-{k.task_type}",
                                                        PROJECTS[0]), timeout=10)
                   for k in MIX}
    sizes = {name: d.ByteSize() for name, d in replies.items()}
    mean = sum(sizes[k.task_type] * k.weight for k in MIX) / sum(k.weight for k in MIX)
    kind = min(sizes, key=lambda name: abs(sizes[name] - mean))
    out.write_bytes(replies[kind].SerializeToString())
    return {**{f"sidecar {k}": v for k, v in sizes.items()}, "sidecar mix mean": round(mean),
            f"no-op (= sidecar {kind})": sizes[kind],
            "representative (7 alt, 2 fb)": representative_decision().ByteSize()}


def rpc_phase(args: argparse.Namespace, res: report.Results, variants: Sequence[Variant],
              work: Path, store_dir: Path) -> None:
    """Start the sidecars and the no-op, load them interleaved (unary, then one stream each)."""
    with contextlib.ExitStack() as stack:
        sidecars = [start_sidecar(stack, v, work, store_dir) for v in variants]
        print(f"sidecars serving: {', '.join(f'{s.name} {s.address}' for s in sidecars)}")
        decision_file = work / "decision.bin"
        res.decision_bytes = capture_decision(sidecars[0].address, decision_file)
        noop = start_noop(stack, decision_file, work)
        targets = [Target(noop.name, noop.address)] + [
            Target(s.name, s.address, v.request) for s, v in zip(sidecars, variants, strict=True)
        ]
        print(f"Route RPC: {len(targets)} servers x concurrency 1, 32 x {args.rounds} rounds "
              f"x {args.requests} calls ...", flush=True)
        res.rpc = measure(targets, args.requests, args.rounds, (1, 32), args.warmup)
        # The stream against its own unary figures: the first variant, and the no-op's floor.
        print(f"RouteStream: {targets[0].name}, {targets[1].name} x {args.stream_rounds} rounds "
              f"x {args.stream_requests} requests, {WINDOW} in flight, each round followed by "
              f"{args.stream_requests // 4} unary Routes at c=1 ...", flush=True)
        res.stream = measure_stream(targets[:2], args.stream_requests, args.stream_rounds,
                                    args.warmup, args.stream_requests // 4)
        running: list[Running] = [noop, *sidecars]
        res.memory_kib = {r.name: memory_kib(r.proc.pid) for r in running}
        res.store_files = {v.name: store_files(store_dir, v.name) for v in variants}
    # The receivers have exited by now (after their sidecars flushed): read what they got.
    res.spans = {v.name: spans_received(sink_log(work, v.name)) for v in variants
                 if v.otlp_sink}


def store_files(store_dir: Path, name: str) -> str:
    """What the variant's SQLite store holds on disk after the load (or that it is absent)."""
    files = sorted(store_dir.glob(f"{name}.db*"))
    if not files:
        return "no store file written"
    return ", ".join(f"{f.name} {f.stat().st_size / 1024:.0f} KiB" for f in files)


def run(args: argparse.Namespace, res: report.Results, work: Path, store_dir: Path) -> None:
    """Core, RPC and stream, footprint and cold-start phases in that order."""
    variants = list(res.variants)
    print(f"core decide(): {args.core_calls} calls ...", flush=True)
    res.core = run_core(args.core_calls, args.core_calls // 10)
    rpc_phase(args, res, variants, work, store_dir)
    first, second = args.footprint
    print(f"bytes on disk: {variants[0].name} on a fresh store, {first} + {second} Routes ...",
          flush=True)
    res.footprint = measure_footprint(variants[0], work, store_dir, first, second)
    print(f"cold start: {args.startup_repeats} runs per server ...", flush=True)
    res.startup = [sidecar_cold_start(v, work, store_dir, args.startup_repeats)
                   for v in variants[:1]]
    res.startup.append(noop_cold_start(work, args.startup_repeats))


def _on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def measure_all(args: argparse.Namespace, argv: Sequence[str]) -> tuple[str, str]:
    """Every phase; the figures for the terminal (the headline first) and the page."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        work = Path(tmp)
        if args.store_path:
            args.store_path.mkdir(parents=True, exist_ok=True)
        store_dir = Path(tempfile.mkdtemp(prefix="store-", dir=args.store_path or work))
        res = report.Results(
            command=shlex.join(["python", "-m", "bench.latency", *argv]),
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=report.machine_info(store_dir),
            settings={"requests": args.requests, "rounds": args.rounds, "warmup": args.warmup,
                      "startup_repeats": args.startup_repeats,
                      "budget_headroom": BUDGET_HEADROOM, "window": WINDOW,
                      "stream_requests": args.stream_requests,
                      "stream_rounds": args.stream_rounds,
                      "footprint_first": args.footprint[0],
                      "footprint_second": args.footprint[1], "footprint_rest_s": REST_S},
            variants=pick_variants(args.variants, args.quick),
        )
        try:
            run(args, res, work, store_dir)
        finally:
            if args.store_path:
                for f in sorted(store_dir.iterdir()):
                    f.unlink()
                store_dir.rmdir()
    res.duration_s = time.perf_counter() - t0
    page = report.markdown(res)
    res_text = [report.console(res)]
    if not args.no_phases:  # the server's own work per Route, step by step, in one process
        timed = phases.run(args.phase_calls, res.command)
        section = phases.markdown(timed)
        res_text.append(section)
        page = tables.splice(page, phases.SECTION, section)
    if not args.no_instructions:  # the server's CPU work per Route, repeatable to under 1%
        section = instruction_section(args.instruction_routes, res.command, res.date)
        res_text.append(section)
        page = tables.splice(page, instructions.SECTION, section)
    if not args.no_execute:  # Complete vs the provider called directly, in the same run
        executed = execute.run(args.quick, res.command)
        res_text.append(execute.console(executed))
        page = execute.splice(page, execute.markdown(executed))
    if not args.no_cache:  # the response cache: hit rate on a Zipf workload, a hit's cost
        cached = cache.run(args.quick, res.command)
        res_text.append(cache.console(cached))
        page = cache.splice(page, cache.markdown(cached))
    return "\n\n".join(res_text), page


def instruction_section(routes: int, command: str, date: str) -> str:
    """Instructions per Route of the no-op and the sidecar, or why they were not counted."""
    if not instructions.available():
        return (f"{instructions.SECTION}\n\nNot counted in this run: valgrind (with "
                "callgrind_control) is not installed.\n")
    print(f"instructions: no-op and sidecar under callgrind, {routes} Routes each ...",
          flush=True)
    return instructions.markdown(instructions.run(routes), command, date)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.latency` and `make bench`."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # progress; the figures follow on stdout
        text, page = measure_all(args, argv)
    print(text)
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(page)
        print(f"wrote {args.output}")
    return 0


def entry() -> int:
    """`main()` with Ctrl-C reported as such (every server started is stopped either way)."""
    try:
        return main()
    except KeyboardInterrupt:
        print("interrupted; every server the harness started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(entry())
