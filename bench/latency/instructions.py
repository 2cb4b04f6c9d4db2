"""Instructions per Route: the server's own CPU work, counted by callgrind, the same every run.

`python -m bench.latency.instructions [--requests N] [--source NAME=DIR ...]` (also a
section of `make bench` when valgrind is installed). Each server runs under
`valgrind --tool=callgrind --instr-atstart=no`: nothing is counted while it starts; once it
is SERVING and warmed up, `callgrind_control -i on` starts a count, N Routes of the RPC mix
are sent one at a time, `-i off` stops it and `--dump` writes it down; three such counts, and
the median is the figure. Every thread of the server process is counted (gRPC's poller, the
store's writer), the client none.

Timings on a shared machine move by a fifth between two runs of the same code; these counts
move by well under 1%. So they are the yardstick for a change's effect on the server's CPU
work: `--source base=/path/to/other/checkout/src` adds a sidecar run from that source tree
(its own `routing_sidecar` package first on PYTHONPATH), side by side with this one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from bench.latency.callgrind_parts import parts
from bench.latency.targets import VARIANTS, start_otlp_sink, tree_env, write_config
from bench.latency.workload import build_requests
from bench.procs import REPO, free_port, stop, wait_serving
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

SECTION = "## Instructions per Route (callgrind)"
PARTS_HEADING = "Where the instructions go:"
WARMUP = 50
SEGMENTS = 3  # counts per server, each of `requests` Routes; the median is reported
LOOPS = ("asyncio", "uvloop")  # the no-op server on each
START_TIMEOUT_S = 600.0  # a start under valgrind is some twenty times slower
TRACED = next(v for v in VARIANTS if v.name == "sidecar-traced")


@dataclass(frozen=True)
class Count:
    """Instructions one server executed for `routes` Routes."""

    name: str
    what: str
    loop: str  # asyncio | uvloop
    routes: int
    segments: tuple[int, ...]  # each count, of `routes` Routes
    segment_parts: tuple[dict[str, int], ...] = ()  # each count by library (callgrind_parts)

    @property
    def parts_per_route(self) -> dict[str, float]:
        """The median count's instructions per Route, by library."""
        if not self.segment_parts:
            return {}
        median = sorted(range(len(self.segments)), key=self.segments.__getitem__)[
            len(self.segments) // 2]
        return {k: v / self.routes for k, v in self.segment_parts[median].items()}

    @property
    def per_route(self) -> float:
        """Instructions per Route: the median count's."""
        return statistics.median(self.segments) / self.routes

    @property
    def spread(self) -> float:
        """(largest - smallest) / median of the counts."""
        return (max(self.segments) - min(self.segments)) / statistics.median(self.segments)


def available() -> bool:
    """True when valgrind and callgrind_control are installed."""
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


@contextlib.contextmanager
def _under_callgrind(argv: Sequence[str], workdir: Path, name: str,
                     env: dict[str, str],
                     ) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """The server under callgrind, counting nothing yet; its log and its dumps' stem."""
    log = workdir / f"{name}.callgrind.log"
    out = workdir / f"{name}.callgrind.out"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", *argv],
            cwd=REPO, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield proc, log, out
    finally:
        stop(proc, timeout=120.0)


def _count(name: str, what: str, loop: str, argv_for: Sequence[str], port: int,
           workdir: Path, requests: int, env: dict[str, str]) -> Count:
    """SEGMENTS counts of `requests` Routes each, in the order made.

    A count sees everything the process runs while it is on, including work that comes by
    the clock (the upkeep round, the WAL checkpoint every 0.2 s, readiness) and Python's
    cyclic collector. Under valgrind a Route takes some fifty times longer, so such work
    weighs more; now and then one count comes out far larger than the others (seen: one of
    three at twice the rest, its cause not caught; ten in a row within 2%). The median of
    the counts leaves such a count out; the spread shows it.
    """
    address = f"127.0.0.1:{port}"
    label, name = name, name.replace(" ", "-")  # in file names and task ids
    with _under_callgrind(argv_for, workdir, name, env) as (proc, log, out):
        wait_serving(address, proc, log, timeout=START_TIMEOUT_S, interval=0.2)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.RouterStub(channel)
            for req in build_requests(WARMUP, f"{name}-warm", seed=7):
                stub.Route(req, timeout=60)
            segments, by_part = [], []
            for k in range(SEGMENTS):
                _control(proc, "-i", "on")
                for req in build_requests(requests, f"{name}-counted-{k}", seed=5 + k):
                    stub.Route(req, timeout=60)
                _control(proc, "-i", "off")
                total, split = _dumped(proc, out, k)
                segments.append(total)
                by_part.append(split)
    return Count(label, what, loop, requests, tuple(segments), tuple(by_part))


def _dumped(proc: subprocess.Popen[bytes], out: Path, k: int) -> tuple[int, dict[str, int]]:
    """Dump the counts so far (callgrind then starts again from zero); total and by library."""
    before = set(out.parent.glob(f"{out.name}.*"))
    _control(proc, "--dump", f"segment-{k}")
    for _ in range(600):
        new = set(out.parent.glob(f"{out.name}.*")) - before
        if new:
            text = max(new).read_text(errors="replace")
            found = re.search(r"^totals: (\d+)", text, re.M)
            if found is not None:
                return int(found.group(1)), parts(text.splitlines())
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no dump of segment {k} beside {out}")


def _control(proc: subprocess.Popen[bytes], *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(proc.pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(requests: int, sources: Sequence[tuple[str, Path]] = ()) -> list[Count]:
    """Count the no-op server and this sidecar on each loop, and a sidecar per source tree."""
    counts = []
    with tempfile.TemporaryDirectory(prefix="routing-instructions-") as tmp:
        work = Path(tmp)
        for loop in LOOPS:
            port = free_port()
            name = "no-op" if loop == "asyncio" else "no-op on uvloop"
            what = ("the no-op Router (bench/latency/noop_server.py), on asyncio's own loop"
                    if loop == "asyncio" else "the same no-op Router on uvloop")
            argv = [sys.executable, "-m", "bench.latency.noop_server", "--port", str(port),
                    "--loop", loop]
            counts.append(_count(name, what, loop, argv, port, work, requests, {}))
        counts.append(_count_sidecar("sidecar", None, "uvloop", work, requests))
        counts.append(_count_traced(work, requests))
        trees = [("sidecar on asyncio", None, "asyncio"),
                 *((name, src, _default_loop(src)) for name, src in sources)]
        counts += [_count_sidecar(name, src, loop, work, requests) for name, src, loop in trees]
    return counts


def _count_sidecar(name: str, src: Path | None, loop: str, work: Path, requests: int) -> Count:
    """The `sidecar` variant from this checkout (on `loop`) or from another source tree."""
    port = free_port()
    # Another tree may not know server.event_loop: it runs on asyncio's loop.
    config = _config(work, name.replace(" ", "-"), None if src else loop)
    env = tree_env(src)
    what = (f"the `sidecar` variant from {src}" if src
            else "the `sidecar` variant (this checkout): `server.event_loop: auto`"
            if loop == "uvloop" else "the same with `server.event_loop: asyncio`")
    return _count(name, what, loop, _serve_argv(config, port), port, work, requests, env)


def _count_traced(work: Path, requests: int) -> Count:
    """The `sidecar-traced` variant: every Route a span, batch-exported to a no-op receiver.

    The count takes in the batches exported while it is on (the batch processor's thread):
    their spans are from the same stream of Routes, so over a count the two come out even.
    """
    port = free_port()
    config = write_config(TRACED, work / "traced.db", work / "traced.yaml")
    with contextlib.ExitStack() as stack:
        sink = start_otlp_sink(stack, "traced-otlp-sink", work)
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sink.address}"}
        return _count("sidecar traced", "the `sidecar-traced` variant: a span per Route, "
                      "batch-exported over OTLP/gRPC to a no-op receiver", "uvloop",
                      _serve_argv(config, port), port, work, requests, env)


def _serve_argv(config: Path, port: int) -> list[str]:
    """`python -m routing_sidecar serve`: valgrind runs the interpreter itself, and PYTHONPATH
    picks the tree (targets.sidecar_argv starts the installed command instead)."""
    return [sys.executable, "-m", "routing_sidecar", "serve", "--config", str(config),
            "--listen", f"127.0.0.1:{port}"]


def _default_loop(src: Path) -> str:
    """The loop a source tree serves on by default: uvloop since it has server.event_loop."""
    return "uvloop" if (src / "routing_sidecar" / "event_loop.py").is_file() else "asyncio"


def _config(work: Path, name: str, event_loop: str | None) -> Path:
    """The `sidecar` variant's config, on the event loop given (None: the tree's default)."""
    config = write_config(VARIANTS[0], work / f"{name}.db", work / f"{name}.yaml")
    if event_loop is not None:
        raw = yaml.safe_load(config.read_text())
        raw["server"]["event_loop"] = event_loop
        config.write_text(yaml.safe_dump(raw))
    return config


def markdown(counts: Sequence[Count], command: str, date: str) -> str:
    """The docs/benchmarks.md section."""
    noop = {c.loop: c.per_route for c in counts if c.name.startswith("no-op")}
    rows = [f"| {c.name} | {c.per_route / 1000:,.0f} k | {c.per_route / noop['asyncio']:.2f}x"
            f" | {c.per_route / noop[c.loop]:.2f}x | {c.spread:.1%} | {c.what} |"
            for c in counts]
    return "\n".join([
        SECTION, "",
        f"- Command: `{command}`; date: {date}; the median of {SEGMENTS} counts of "
        f"{counts[0].routes} Routes each of the RPC mix at concurrency 1 after a warm-up, in "
        "the server process only (every thread; the client not at all).",
        "- Repeatable to well under 1% from run to run, so it shows a change's effect on the "
        "server's CPU work that the timings above cannot resolve. It leaves out what a count "
        "cannot see: time in the kernel, waits, and the CPU caches.",
        "- `vs no-op` is against the no-op server on asyncio's own loop, the yardstick of the "
        "timed ratios above; `vs no-op, same loop` against the no-op server on the loop the "
        "row's server runs on.", "",
        "| server | instructions per Route | vs no-op | vs no-op, same loop | spread of the "
        "counts | what |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows, "", *_tracing_line(counts), *_parts_table(counts),
    ])


def _parts_table(counts: Sequence[Count]) -> list[str]:
    """The median count of each server by the library that ran its instructions."""
    split = [(c.name, c.parts_per_route) for c in counts if c.parts_per_route]
    if not split:
        return []
    names = list(split[0][1])
    rows = [f"| {part} | " + " | ".join(f"{p[part] / 1000:,.0f} k" for _, p in split) + " |"
            for part in names if any(p[part] for _, p in split)]
    return [
        PARTS_HEADING, "",
        "The median count of each server by the library whose code ran the instructions, "
        "per Route (bench/latency/callgrind_parts.py). `Python interpreter` is the Python code "
        "itself: its bytecode, objects and the C builtins it calls.", "",
        "| part | " + " | ".join(name for name, _ in split) + " |",
        "| --- |" + " --- |" * len(split),
        *rows, "",
    ]


def _tracing_line(counts: Sequence[Count]) -> list[str]:
    """What tracing every Route adds to the sidecar's work, when both were counted."""
    by_name = {c.name: c.per_route for c in counts}
    if "sidecar" not in by_name or "sidecar traced" not in by_name:
        return []
    ratio = by_name["sidecar traced"] / by_name["sidecar"]
    return [f"Tracing every Route: {ratio:.2f}x the instructions of the untraced sidecar "
            f"({(by_name['sidecar traced'] - by_name['sidecar']) / 1000:,.0f} k more per "
            "Route, the span's encoding on the batch processor's thread included).", ""]


def source_tree(spec: str) -> tuple[str, Path]:
    """`--source NAME=DIR`: a name and a tree holding a routing_sidecar package."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not (Path(path) / "routing_sidecar").is_dir():
        raise argparse.ArgumentTypeError(
            f"--source wants NAME=DIR with DIR holding a routing_sidecar package (got {spec!r})")
    return name, Path(path).resolve()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.latency.instructions`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--source", type=source_tree, action="append", default=[],
                   metavar="NAME=DIR", help="also count a sidecar run from this source tree")
    args = p.parse_args(argv)
    if not available():
        print("valgrind (with callgrind_control) is not installed", file=sys.stderr)
        return 2
    counts = run(args.requests, args.source)
    command = "python -m bench.latency.instructions " + " ".join(argv or sys.argv[1:])
    print(markdown(counts, command.strip(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
