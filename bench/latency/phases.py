"""Where a Route's time goes: each step of the server's work, timed in one process.

`python -m bench.latency.phases [--calls N]` (also a section of `make bench`). A sidecar with
the `sidecar` variant's config is started in this process (its gRPC port unused); each Route
is then driven step by step as the servicer drives it, without the transport:

- the steps the servicer takes in turn (convert the request, decide and reserve, commit,
  count, convert the answer, serialize it) are timed back to back: their sum is the server's
  own work per Route;
- inside them, a few calls are timed by wrapping them (nested, so their rows overlap the
  steps they belong to; each wrapper adds well under a microsecond).

The transport's share is not here: the Route RPC section compares with a no-op server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import inspect
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import routing_sidecar.service.routing as routing_module
from bench.latency.targets import VARIANTS, write_config
from bench.latency.workload import build_requests
from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar.grpc_api import convert

SECTION = "## Where a Route's time goes (in one process)"
# The steps, in the servicer's order, and what each covers.
STEPS = (
    ("request to task", "task_from_pb: validate the RouteRequest, build the Task"),
    ("decide and reserve", "RoutingService.begin: view, core decide(), reservation, audit row"),
    ("commit", "RoutingService.finish: the audit row and reservation rows committed"),
    ("count", "Observer.decided: decision counters, latency histogram"),
    ("decision to message", "decision_to_pb"),
    ("serialize", "Decision.SerializeToString (grpc does this once per answer)"),
)


@dataclass
class Results:
    """Mean microseconds per Route of each step and of each timed call inside them."""

    command: str
    date: str
    calls: int
    steps: dict[str, float] = field(default_factory=dict)
    inner: dict[str, float] = field(default_factory=dict)


class _Timer:
    """Wraps chosen callables so that their total time is summed under a label."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)
        totals, clock = self.totals, time.perf_counter
        totals[label] = 0.0
        wrapped: Callable[..., Any]
        if inspect.iscoroutinefunction(fn):
            async def wrapped(*args: Any, **kwargs: Any) -> Any:
                t = clock()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    totals[label] += clock() - t
        else:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                t = clock()
                try:
                    return fn(*args, **kwargs)
                finally:
                    totals[label] += clock() - t
        own = getattr(owner, "__dict__", {})
        had, raw = name in own, own.get(name)  # a classmethod stays one when put back
        setattr(owner, name, wrapped)
        self._undo.append((lambda: setattr(owner, name, raw)) if had
                          else (lambda: delattr(owner, name)))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


class _Timed:
    """Stands in for an object whose methods cannot be wrapped: every other name is its."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def _inner_timers(car: Sidecar) -> Iterator[_Timer]:
    svc = car.routing
    assert car.store is not None
    timer = _Timer()
    timer.wrap(svc, "_select", "begin > view and core decide()")
    timer.wrap(routing_module, "build_view", "begin > view > build_view")
    timer.wrap(routing_module, "decide", "begin > view > core decide()")
    # The budget book is compiled (its methods cannot be replaced): a stand-in times it, and
    # passes its other methods through at a lookup each (well under a microsecond a Route).
    book = svc.ledger
    svc.ledger = _Timed(book)  # type: ignore[assignment]
    timer.wrap(svc.ledger, "reserve", "begin > ledger reserve")
    timer.wrap(svc, "_decided", "begin > answer and audit row")
    timer.wrap(routing_module.DecisionRecord, "from_decision",
               "begin > answer and audit row > DecisionRecord")
    writer = car.store.writer  # type: ignore[attr-defined]
    timer.wrap(writer, "_write_batch", "commit > SQLite transaction")
    try:
        yield timer
    finally:
        timer.restore()
        svc.ledger = book


async def _routes(car: Sidecar, requests: Sequence[Any], steps: dict[str, float]) -> None:
    svc, observer = car.routing, car.observer
    clock = time.perf_counter
    names = [s for s, _ in STEPS]
    sums = [0.0] * len(names)
    for req in requests:
        t0 = clock()
        task = convert.task_from_pb(req)
        t1 = clock()
        routed = await svc.begin(task)
        t2 = clock()
        decision = await svc.finish(routed)
        t3 = clock()
        observer.decided(task, decision, t3 - t0)
        t4 = clock()
        msg = convert.decision_to_pb(decision)
        t5 = clock()
        msg.SerializeToString()
        t6 = clock()
        for i, (a, b) in enumerate(((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5),
                                    (t5, t6))):
            sums[i] += b - a
    for name, total in zip(names, sums, strict=True):
        steps[name] = steps.get(name, 0.0) + total


async def _measure(calls: int, workdir: Path) -> tuple[dict[str, float], dict[str, float]]:
    config = write_config(VARIANTS[0], workdir / "phases.db", workdir / "phases.yaml")
    raw = yaml.safe_load(config.read_text())
    raw["server"]["listen"] = "127.0.0.1:0"
    car = Sidecar(parse_config(yaml.safe_dump(raw), str(config)))
    await car.start()
    try:
        await _routes(car, build_requests(min(calls, 2000), "warm"), {})
        gc.collect()
        gc.freeze()  # as the served process does once started
        requests = build_requests(calls, "phase", seed=11)
        steps: dict[str, float] = {}
        await _routes(car, requests, steps)
        with _inner_timers(car) as timer:
            await _routes(car, build_requests(calls, "inner", seed=13), {})
        inner = dict(timer.totals)
    finally:
        await car.stop()
    return ({k: v / calls * 1e6 for k, v in steps.items()},
            {k: v / calls * 1e6 for k, v in inner.items()})


def run(calls: int, command: str) -> Results:
    """Time `calls` Routes step by step (then again with the inner calls timed)."""
    res = Results(command, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), calls)
    with tempfile.TemporaryDirectory(prefix="routing-phases-") as tmp:
        res.steps, res.inner = asyncio.run(_measure(calls, Path(tmp)))
    return res


def markdown(res: Results) -> str:
    """The docs/benchmarks.md section."""
    total = sum(res.steps.values())
    what = dict(STEPS)
    rows = [f"| {name} | {us:.1f} | {us / total:.0%} | {what[name]} |"
            for name, us in res.steps.items()]
    inner = [f"| {name} | {us:.1f} |" for name, us in res.inner.items()]
    return "\n".join([
        SECTION, "",
        f"- Command: `{res.command}`; date: {res.date}; {res.calls} Routes of the RPC mix, "
        "one at a time, on the `sidecar` variant's config and a new SQLite store.",
        "- The server's own work per Route, without the transport (the no-op server's share "
        "is in the Route RPC section). Mean µs per Route.", "",
        "| step | µs | share | what |", "| --- | --- | --- | --- |", *rows,
        f"| **sum** | **{total:.1f}** | | |", "",
        "Timed inside those steps (a second pass with these calls wrapped; nested rows "
        "overlap):", "",
        "| call | µs |", "| --- | --- |", *inner, "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.latency.phases`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=5000)
    args = p.parse_args(argv)
    print(markdown(run(args.calls, f"python -m bench.latency.phases --calls {args.calls}")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
