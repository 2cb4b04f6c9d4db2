"""Instructions per Route: the server's own CPU work, counted by callgrind, the same every run.

`python -m bench.latency.instructions [--requests N] [--source NAME=DIR ...]` (also a
section of `make bench` when valgrind is installed). Each server runs under
`valgrind --tool=callgrind --instr-atstart=no`: nothing is counted while it starts; once it
is SERVING and warmed up, `callgrind_control -i on` starts the count, N Routes of the RPC mix
are sent one at a time, and `-i off` stops it before the server is told to stop. Every
thread of the server process is counted (gRPC's poller, the store's writer), the client
none.

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.latency.targets import VARIANTS, write_config
from bench.latency.workload import build_requests
from bench.procs import REPO, free_port, stop, wait_serving
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

SECTION = "## Instructions per Route (callgrind)"
WARMUP = 50
START_TIMEOUT_S = 600.0  # a start under valgrind is some twenty times slower


@dataclass(frozen=True)
class Count:
    """Instructions one server executed for `routes` Routes."""

    name: str
    what: str
    routes: int
    instructions: int

    @property
    def per_route(self) -> float:
        """Instructions per Route."""
        return self.instructions / self.routes


def available() -> bool:
    """True when valgrind and callgrind_control are installed."""
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


@contextlib.contextmanager
def _under_callgrind(argv: Sequence[str], workdir: Path, name: str,
                     env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = workdir / f"{name}.callgrind.log"
    out = workdir / f"{name}.callgrind.out"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", *argv],
            cwd=REPO, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield proc, log
    finally:
        stop(proc, timeout=120.0)


def _count(name: str, what: str, argv_for: Sequence[str], port: int, workdir: Path,
           requests: int, env: dict[str, str]) -> Count:
    address = f"127.0.0.1:{port}"
    with _under_callgrind(argv_for, workdir, name, env) as (proc, log):
        wait_serving(address, proc, log, timeout=START_TIMEOUT_S, interval=0.2)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.RouterStub(channel)
            for req in build_requests(WARMUP, f"{name}-warm", seed=7):
                stub.Route(req, timeout=60)
            _control(proc, "on")
            for req in build_requests(requests, f"{name}-counted", seed=5):
                stub.Route(req, timeout=60)
            _control(proc, "off")
        stop(proc, timeout=120.0)
        text = log.read_text(errors="replace")
    found = re.search(r"Collected : (\d+)", text)
    if found is None:
        raise RuntimeError(f"{name}: callgrind printed no count:\n{text[-2000:]}")
    return Count(name, what, requests, int(found.group(1)))


def _control(proc: subprocess.Popen[bytes], state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(proc.pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(requests: int, sources: Sequence[tuple[str, Path]] = ()) -> list[Count]:
    """Count the no-op server, this sidecar, and a sidecar per extra source tree."""
    counts = []
    with tempfile.TemporaryDirectory(prefix="routing-instructions-") as tmp:
        work = Path(tmp)
        port = free_port()
        counts.append(_count(
            "no-op", "the no-op Router (bench/latency/noop_server.py)",
            [sys.executable, "-m", "bench.latency.noop_server", "--port", str(port)],
            port, work, requests, {}))
        trees = [("sidecar", None), *sources]
        for name, src in trees:
            config = write_config(VARIANTS[0], work / f"{name}.db", work / f"{name}.yaml")
            port = free_port()
            env = {"PYTHONPATH": os.pathsep.join([str(src), str(REPO)])} if src else {}
            what = (f"the `sidecar` variant from {src}" if src
                    else "the `sidecar` variant (this checkout)")
            counts.append(_count(
                name, what,
                [sys.executable, "-m", "routing_sidecar", "serve", "--config", str(config),
                 "--listen", f"127.0.0.1:{port}"], port, work, requests, env))
    return counts


def markdown(counts: Sequence[Count], command: str, date: str) -> str:
    """The docs/benchmarks.md section."""
    noop = counts[0].per_route
    rows = [f"| {c.name} | {c.per_route / 1000:,.0f} k | {c.per_route / noop:.2f}x | {c.what} |"
            for c in counts]
    return "\n".join([
        SECTION, "",
        f"- Command: `{command}`; date: {date}; {counts[0].routes} Routes of the RPC mix at "
        "concurrency 1 after a warm-up, counted in the server process only (every thread; "
        "the client not at all).",
        "- Repeatable to well under 1% from run to run, so it shows a change's effect on the "
        "server's CPU work that the timings above cannot resolve. It leaves out what a count "
        "cannot see: time in the kernel, waits, and the CPU caches.", "",
        "| server | instructions per Route | vs no-op | what |", "| --- | --- | --- | --- |",
        *rows, "",
    ])


def _source(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not (Path(path) / "routing_sidecar").is_dir():
        raise argparse.ArgumentTypeError(
            f"--source wants NAME=DIR with DIR holding a routing_sidecar package (got {spec!r})")
    return name, Path(path).resolve()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.latency.instructions`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--source", type=_source, action="append", default=[],
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
