"""Cold start to SERVING (health polled every 5 ms) and resident memory of a server process."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.latency.targets import VARIANTS, Variant, noop_argv, sidecar_argv, write_config
from bench.procs import ROUTER_SERVICE, free_port, memory_kib, spawn, wait_serving


@dataclass(frozen=True)
class StartupResult:
    """Cold starts of one server: seconds from spawn to SERVING, and RSS just after."""

    name: str
    seconds: tuple[float, ...]
    rss_idle_kib: tuple[int, ...]

    @property
    def median_s(self) -> float:
        """Median time to SERVING."""
        return statistics.median(self.seconds)

    @property
    def median_rss_kib(self) -> float:
        """Median RSS right after reaching SERVING."""
        return statistics.median(self.rss_idle_kib)


def cold_start(name: str, argv_for: Callable[[int, int], list[str]], workdir: Path,
               repeats: int = 3) -> StartupResult:
    """Spawn `repeats` fresh processes; time each from spawn until health says SERVING."""
    seconds, rss = [], []
    for i in range(repeats):
        port = free_port()
        log = workdir / f"cold-{name}-{i}.log"
        argv = argv_for(port, i)
        t0 = time.perf_counter()
        with spawn(argv, log) as proc:
            wait_serving(f"127.0.0.1:{port}", proc, log, ROUTER_SERVICE, interval=0.005)
            seconds.append(time.perf_counter() - t0)
            rss.append(memory_kib(proc.pid)["VmRSS"])
    return StartupResult(name, tuple(seconds), tuple(rss))


def sidecar_cold_start(variant: Variant, workdir: Path, store_dir: Path,
                       repeats: int = 3) -> StartupResult:
    """Cold starts of a sidecar variant, each on a new, empty SQLite file."""

    def argv_for(port: int, i: int) -> list[str]:
        cfg = write_config(variant, store_dir / f"cold-{variant.name}-{i}.db",
                           workdir / f"cold-{variant.name}-{i}.yaml")
        return sidecar_argv(cfg, port)

    return cold_start(variant.name, argv_for, workdir, repeats)


def noop_cold_start(workdir: Path, repeats: int = 3) -> StartupResult:
    """Cold starts of the no-op Router, the floor for a Python grpc.aio process."""
    return cold_start("noop", lambda port, _i: noop_argv(port, None), workdir, repeats)


def main() -> None:
    """Command line entry point: cold starts of the default sidecar and the no-op."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp, contextlib.ExitStack():
        work = Path(tmp)
        for r in (sidecar_cold_start(VARIANTS[0], work, work), noop_cold_start(work)):
            print(f"{r.name:<12} median {r.median_s * 1000:7.1f} ms to SERVING "
                  f"{[round(s * 1000) for s in r.seconds]}  RSS {r.median_rss_kib / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
