"""Run every benchmark in one go, print the figures, write docs/benchmarks.md.

`python -m bench.run [--quick] [--requests N] [--store-path DIR]` (also `make bench`).
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

from bench import cache, execute, report
from bench.core import run_core
from bench.procs import REPO, memory_kib
from bench.rpc import Target, measure
from bench.startup import noop_cold_start, sidecar_cold_start
from bench.targets import BUDGET_HEADROOM, VARIANTS, Running, Variant, start_noop, start_sidecar
from bench.workload import MIX, PROJECTS, make_request, representative_decision
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line options; --quick shrinks every phase."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run (under ~40 s)")
    p.add_argument("--requests", type=int, help="calls per round (default 750, quick 250)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 6, quick 2)")
    p.add_argument("--core-calls", type=int, help="decide() calls (default 20000, quick 5000)")
    p.add_argument("--store-path", type=Path,
                   help="directory for the sidecars' SQLite files (default: a temp dir)")
    p.add_argument("--variants", help="comma-separated variant names (default: all; quick: "
                   f"the first); known: {', '.join(v.name for v in VARIANTS)}")
    p.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    p.add_argument("--no-execute", action="store_true",
                   help="skip the execute-mode phase (bench/execute.py)")
    p.add_argument("--no-cache", action="store_true",
                   help="skip the response cache phase (bench/cache.py)")
    args = p.parse_args(argv)
    args.requests = args.requests or (250 if args.quick else 750)
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.core_calls = args.core_calls or (5_000 if args.quick else 20_000)
    args.warmup = 100 if args.quick else 200
    args.startup_repeats = 3
    return args


def pick_variants(spec: str | None, quick: bool) -> list[Variant]:
    """The variants named in `spec`, else all (quick: the first)."""
    if not spec:
        return list(VARIANTS[:1] if quick else VARIANTS)
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
    """Start the sidecars and the no-op, load them interleaved, read their memory."""
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
        running: list[Running] = [noop, *sidecars]
        res.memory_kib = {r.name: memory_kib(r.proc.pid) for r in running}
        res.store_files = {v.name: store_files(store_dir, v.name) for v in variants}


def store_files(store_dir: Path, name: str) -> str:
    """What the variant's SQLite store holds on disk after the load (or that it is absent)."""
    files = sorted(store_dir.glob(f"{name}.db*"))
    if not files:
        return "no store file written"
    return ", ".join(f"{f.name} {f.stat().st_size / 1024:.0f} KiB" for f in files)


def run(args: argparse.Namespace, res: report.Results, work: Path, store_dir: Path) -> None:
    """Core, RPC and cold-start phases in that order."""
    variants = list(res.variants)
    print(f"core decide(): {args.core_calls} calls ...", flush=True)
    res.core = run_core(args.core_calls, args.core_calls // 10)
    rpc_phase(args, res, variants, work, store_dir)
    print(f"cold start: {args.startup_repeats} runs per server ...", flush=True)
    res.startup = [sidecar_cold_start(v, work, store_dir, args.startup_repeats)
                   for v in variants[:1]]
    res.startup.append(noop_cold_start(work, args.startup_repeats))


def _on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.run` and `make bench`."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    args = parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        work = Path(tmp)
        if args.store_path:
            args.store_path.mkdir(parents=True, exist_ok=True)
        store_dir = Path(tempfile.mkdtemp(prefix="store-", dir=args.store_path or work))
        res = report.Results(
            command=shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])]),
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=report.machine_info(store_dir),
            settings={"requests": args.requests, "rounds": args.rounds, "warmup": args.warmup,
                      "startup_repeats": args.startup_repeats,
                      "budget_headroom": BUDGET_HEADROOM},
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
    print()
    print(report.console(res))
    page = report.markdown(res)
    if not args.no_execute:  # Complete vs the provider called directly, in the same run
        executed = execute.run(args.quick, res.command)
        print()
        print(execute.console(executed))
        page = execute.splice(page, execute.markdown(executed))
    if not args.no_cache:  # the response cache: hit rate on a Zipf workload, a hit's cost
        cached = cache.run(args.quick, res.command)
        print()
        print(cache.console(cached))
        page = cache.splice(page, cache.markdown(cached))
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(page)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every server the harness started has been stopped", file=sys.stderr)
        sys.exit(130)
