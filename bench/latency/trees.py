"""Timed A/B of source trees: this checkout's sidecar beside the same sidecar from other trees.

`python -m bench.latency.trees --source base=/path/to/other/checkout/src [...]`. Every tree's
sidecar (the `sidecar` variant, each on its own new SQLite file) runs at once, and the same
client loads them in interleaved rounds: Route at concurrency 1 and 32 (the Route RPC
section's load), then one RouteStream beside unary Route (the RouteStream section's). Round i
of one tree runs next to round i of the others, so the machine's drift between rounds weighs
on all alike; the per-round spread shows how far one run can be trusted.

The callgrind counts (`python -m bench.latency.instructions --source ...`) resolve changes of
a percent; this is for what they cannot see: waits, the kernel, the CPU caches, concurrency.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.latency import rpc, stream
from bench.latency.instructions import source_tree
from bench.latency.targets import (
    VARIANTS,
    Running,
    sidecar_argv,
    start,
    tree_env,
    write_config,
)

THIS = "this-checkout"  # names go into task ids: no spaces


def start_tree(stack: contextlib.ExitStack, name: str, src: Path | None, work: Path) -> Running:
    """The `sidecar` variant from `src` (its package first on PYTHONPATH), or this checkout."""
    slug = re.sub(r"[^A-Za-z0-9_.:/@+-]", "-", name)  # as a task id may spell it
    # The variant's config as any tree reads it (instructions._config: no event_loop key).
    config = write_config(VARIANTS[0], work / f"{slug}.db", work / f"{slug}.yaml")
    return start(stack, slug, lambda port: sidecar_argv(config, port), work, tree_env(src))


def _print_rpc(summaries: Sequence[rpc.Summary]) -> None:
    for s in summaries:
        rounds = ", ".join(f"{r:.0f}" for r in s.round_rps)
        print(f"{s.target:>16} Route c={s.concurrency:<3} p50 {s.p50_us:8.1f} µs  p99 "
              f"{s.p99_us:8.1f} µs  {s.rps:7.0f} req/s (rounds {rounds})  errors={s.errors}")


def _print_stream(summaries: Sequence[rpc.Summary]) -> None:
    unary = {s.target: s.rps for s in summaries if s.concurrency == 1}
    for s in summaries:
        if s.concurrency == 1:
            continue
        ratio = s.rps / unary[s.target] if unary.get(s.target) else float("nan")
        print(f"{s.target:>16} RouteStream (window {s.concurrency}) {s.rps:7.0f} decisions/s, "
              f"unary c=1 {unary.get(s.target, 0):7.0f}/s: {ratio:.2f}x  errors={s.errors}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.latency.trees`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=source_tree, action="append", required=True,
                   metavar="NAME=DIR", help="a sidecar run from this source tree (repeatable)")
    p.add_argument("--requests", type=int, default=1500, help="Route calls per round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--stream-requests", type=int, default=3000, help="per stream round")
    p.add_argument("--stream-rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=200)
    args = p.parse_args(argv)
    print("command: python -m bench.latency.trees " + " ".join(argv or sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="bench-trees-") as tmp, \
            contextlib.ExitStack() as stack:
        work = Path(tmp)
        trees = [(THIS, None), *args.source]
        running = [start_tree(stack, name, src, work) for name, src in trees]
        targets = [rpc.Target(r.name, r.address) for r in running]
        _print_rpc(rpc.measure(targets, args.requests, args.rounds, [1, 32], args.warmup))
        _print_stream(stream.measure_stream(targets, args.stream_requests, args.stream_rounds,
                                            args.warmup, args.requests // 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
