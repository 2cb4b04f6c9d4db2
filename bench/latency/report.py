"""Machine description, console tables and the docs/benchmarks.md page."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google import protobuf

from bench.latency.core import CoreResult
from bench.latency.footprint import Footprint
from bench.latency.headline import headline_console, headline_markdown, machine_line
from bench.latency.rpc import Summary, ratios
from bench.latency.startup import StartupResult
from bench.latency.tables import md_table, text_table
from bench.latency.targets import Variant

RATIO_TARGET = 1.3  # the later aim for every Route ratio to the no-op (the headline has today's)
CORE_P99_TARGET_US = 100.0


@dataclass
class Results:
    """Everything one run measured, plus how and where."""

    command: str
    date: str
    machine: dict[str, str]
    settings: dict[str, object]
    variants: Sequence[Variant]
    rpc: list[Summary] = field(default_factory=list)
    decision_bytes: dict[str, int] = field(default_factory=dict)
    memory_kib: dict[str, dict[str, int]] = field(default_factory=dict)
    core: list[CoreResult] = field(default_factory=list)
    startup: list[StartupResult] = field(default_factory=list)
    store_files: dict[str, str] = field(default_factory=dict)
    stream: list[Summary] = field(default_factory=list)
    footprint: Footprint | None = None
    spans: dict[str, int | None] = field(default_factory=dict)
    duration_s: float = 0.0


def _first(path: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                k, _, v = line.partition(":" if ":" in line else "=")
                if k.strip() == key:
                    return v.strip().strip('"')
    except OSError:
        pass
    return "unknown"


def filesystem_of(path: Path) -> str:
    """Filesystem type of the mount holding `path`, from /proc/mounts."""
    best, fstype = "", "unknown"
    target = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) > len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        pass
    return fstype


def machine_info(store_dir: Path) -> dict[str, str]:
    """CPU, cores, memory, OS, kernel, Python, grpcio, protobuf, store filesystem."""
    mem_kib = _first("/proc/meminfo", "MemTotal").split()[0]
    usable = len(os.sched_getaffinity(0))
    return {
        "CPU": _first("/proc/cpuinfo", "model name"),
        "Cores": f"{os.cpu_count()} logical ({usable} usable by this process)",
        "Memory": f"{int(mem_kib) / 1024 / 1024:.1f} GiB" if mem_kib.isdigit() else mem_kib,
        "OS": _first("/etc/os-release", "PRETTY_NAME"),
        "Kernel": platform.release(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "grpcio": grpc.__version__,
        "protobuf": protobuf.__version__,
        "Store filesystem": f"{filesystem_of(store_dir)} ({store_dir})",
        "Load average at start": " ".join(_read("/proc/loadavg").split()[:3]),
    }


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return "unknown"


def _ok(good: bool) -> str:
    return "meets" if good else "MISSES"


def rpc_rows(res: Results) -> list[list[str]]:
    """One row per (target, concurrency): latency, throughput, ratios to the no-op."""
    base = {s.concurrency: s for s in res.rpc if s.target == "noop"}
    rows = []
    for s in sorted(res.rpc, key=lambda s: (s.concurrency, s.target != "noop", s.target)):
        r = ratios(s, base[s.concurrency]) if s.target != "noop" else None
        rows.append([
            s.target, str(s.concurrency), f"{s.calls}", f"{s.p50_us:.0f}", f"{s.p99_us:.0f}",
            f"{s.mean_us:.0f}", f"{s.rps:.0f}", f"{s.response_bytes:.0f}", str(s.errors),
            f"{r['p50']:.2f}x" if r else "-", f"{r['p99']:.2f}x" if r else "-",
            f"{r['rps']:.2f}x" if r else "-",
            "-".join(f"{x:.0f}" for x in (min(s.round_p50_us), max(s.round_p50_us)))
            if s.round_p50_us else "-",
        ])
    return rows


RPC_HEAD = ["target", "conc", "calls", "p50 µs", "p99 µs", "mean µs", "req/s", "resp B",
            "errors", "p50/noop", "p99/noop", "req/s / noop", "round p50s µs"]
CORE_HEAD = ["catalog", "models", "rules", "calls", "p50 µs", "p99 µs", "mean µs", "statuses"]
START_HEAD = ["server", "median to SERVING ms", "runs ms", "RSS at start MiB",
              "RSS after load MiB", "peak RSS MiB"]


def core_rows(res: Results) -> list[list[str]]:
    """One row per catalog timed."""
    return [[c.label, str(c.models), str(c.rules), str(c.calls), f"{c.p50_us:.1f}",
             f"{c.p99_us:.1f}", f"{c.mean_us:.1f}",
             ", ".join(f"{k} {v}" for k, v in sorted(c.statuses.items()))] for c in res.core]


def startup_rows(res: Results) -> list[list[str]]:
    """One row per server: cold start and memory."""
    rows = []
    for s in res.startup:
        mem = res.memory_kib.get(s.name, {})
        rows.append([
            s.name, f"{s.median_s * 1000:.0f}", " / ".join(f"{x * 1000:.0f}" for x in s.seconds),
            f"{s.median_rss_kib / 1024:.1f}",
            f"{mem['VmRSS'] / 1024:.1f}" if mem else "-",
            f"{mem['VmHWM'] / 1024:.1f}" if mem else "-",
        ])
    return rows


def verdicts(res: Results) -> list[str]:
    """The targets, each with the figure it is judged on (targets, not assertions)."""
    out = []
    base = {s.concurrency: s for s in res.rpc if s.target == "noop"}
    for s in res.rpc:
        if s.target == "noop":
            continue
        r = ratios(s, base[s.concurrency])
        for q in ("p50", "p99"):
            out.append(f"Route {q} {s.target} c={s.concurrency}: {r[q]:.2f}x no-op "
                       f"(later aim <= {RATIO_TARGET}x): {_ok(r[q] <= RATIO_TARGET)}")
    out += pair_verdicts(res)
    for c in res.core[:1]:
        out.append(f"core decide() p99 ({c.label}): {c.p99_us:.1f} µs "
                   f"(target < {CORE_P99_TARGET_US:.0f} µs): {_ok(c.p99_us < CORE_P99_TARGET_US)}")
    return out


def pair_verdicts(res: Results) -> list[str]:
    """Variants judged against another variant of the same run (e.g. tracing on / off)."""
    out = []
    by_key = {(s.target, s.concurrency): s for s in res.rpc}
    for v in res.variants:
        if v.compare_to is None:
            continue
        for (target, conc), s in sorted(by_key.items(), key=lambda kv: kv[0][1]):
            other = by_key.get((v.compare_to, conc))
            if target != v.name or other is None:
                continue
            r = ratios(s, other)
            for q in ("p50", "p99"):
                out.append(f"Route {q} {v.name} / {v.compare_to} c={conc}: {r[q]:.2f}x "
                           f"(target <= {v.compare_target}x): {_ok(r[q] <= v.compare_target)}")
            out.append(f"Route req/s {v.name} / {v.compare_to} c={conc}: {r['rps']:.2f}x")
    return out


def console(res: Results) -> str:
    """The run's figures as plain tables for the terminal, the headline first."""
    s = res.settings
    return "\n\n".join([
        headline_console(res),
        f"Route RPC: {s['requests']} calls per round, {s['rounds']} interleaved rounds per "
        f"target and concurrency, {s['warmup']} warm-up calls\nDecision sizes: "
        + ", ".join(f"{k} {v} B" for k, v in res.decision_bytes.items()),
        text_table(RPC_HEAD, rpc_rows(res)),
        f"RouteStream: one stream per server, {s['window']} requests in flight",
        text_table(STREAM_HEAD, stream_rows(res)),
        "Bytes on disk per decision: " + footprint_text(res),
        "Core decide()",
        text_table(CORE_HEAD, core_rows(res)),
        "Cold start (health polled every 5 ms) and memory",
        text_table(START_HEAD, startup_rows(res)),
        "SQLite store after the load: " + _stores(res),
        "Targets (not assertions)\n" + "\n".join(f"  {v}" for v in verdicts(res)),
        f"total {res.duration_s:.0f} s",
    ])


STREAM_HEAD = ["server", "calls", "decisions/s", "p50 µs", "p99 µs", "errors",
               "stream / unary", "round p50s µs"]


def stream_rows(res: Results) -> list[list[str]]:
    """Per server: its stream, then the unary c=1 rounds interleaved with it, and the ratio."""
    unary = {s.target: s for s in res.stream if s.concurrency == 1}
    rows = []
    for s in sorted(res.stream, key=lambda s: (s.target != "noop", s.target, s.concurrency == 1)):
        u = unary.get(s.target)
        kind = f"{s.target}, one stream" if s.concurrency > 1 else f"{s.target}, unary c=1"
        ratio = f"{s.rps / u.rps:.2f}x" if s.concurrency > 1 and u and u.rps else "-"
        rows.append([
            kind, str(s.calls), f"{s.rps:.0f}", f"{s.p50_us:.0f}", f"{s.p99_us:.0f}",
            str(s.errors), ratio,
            "-".join(f"{x:.0f}" for x in (min(s.round_p50_us), max(s.round_p50_us)))
            if s.round_p50_us else "-",
        ])
    return rows


def footprint_text(res: Results) -> str:
    """The footprint phase's two snapshots in a sentence."""
    f = res.footprint
    if f is None:
        return "not measured"
    b, a = f.before, f.after
    return (f"{f.db_bytes_per_decision:.0f} B per decision in the store, "
            f"{f.bytes_per_decision:.0f} B in store and WAL files together, over the "
            f"{f.decisions} decisions "
            f"between two rests: store {b.db_bytes / 1024:.0f} -> {a.db_bytes / 1024:.0f} KiB, "
            f"WAL {b.wal_bytes / 1024:.0f} -> {a.wal_bytes / 1024:.0f} KiB "
            f"({b.decisions} -> {a.decisions} decisions stored); largest WAL seen "
            f"{f.wal_max_bytes / 1024:.0f} KiB; {f.errors} errors")


def _stores(res: Results) -> str:
    return "; ".join(f"{k}: {v}" for k, v in res.store_files.items()) or "-"


def _method(res: Results) -> str:
    s = res.settings
    variants = "\n".join(f"- `{v.name}`: {v.description}" for v in res.variants)
    sizes = ", ".join(f"{k} {v} B" for k, v in res.decision_bytes.items())
    return f"""\
Route RPC: a grpc.aio client in the harness process sends a fixed RouteRequest mix
(fix_bug 30%, analyze_logs 25%, docs_update 20%, check_links 15%, strategic_design with ev
10%; labels project and lane; `dry_run` false unless the variant says otherwise) over one
channel per server, at concurrency 1 and 32. Each server runs in its own process on
127.0.0.1; the no-op baseline (`bench/latency/noop_server.py`) serves the same method path with
grpc.aio, parses each request and answers a pre-built Decision captured from the sidecar
(the one nearest the mix's mean size; sizes below). Per server and concurrency:
{s['warmup']} warm-up calls, then
{s['rounds']} rounds of {s['requests']} calls, rounds interleaved A/B/A/B (order reversed
every other round) so machine noise hits every server alike. Latency per call with
`time.perf_counter_ns`, percentiles by nearest rank over all rounds; throughput = calls /
summed round wall time. The client is Python too, so absolute figures include its cost;
the ratios to the no-op are the yardstick. "round p50s" is the range of per-round medians,
a gauge of the noise.

Decision sizes (serialized): {sizes}.

Sidecar variants, each against the same no-op baseline:

{variants}

Each sidecar gets a temp copy of `config/router.yaml` with `store.path` in a temp directory
and non-task budget limits raised {s['budget_headroom']}x so a long run never exhausts them
(every decision still reserves on every scope).

Core: `decide(task, catalog, DecisionView(ev_threshold=1000))` timed call by call with
`perf_counter_ns`, GC on, after warm-up, over 1000 varied tasks (types, priorities 0-100,
capabilities, min tiers, 500-250k input tokens, labels, some ev) on a synthetic catalog:
50 models from 8 providers, tiers 1-3, varied prices, windows and capabilities; 10 policies
of 6-12 models plus one over all 50; 100 rules with exact lists, globs, priority ranges and
labels (first match wins). Rows: tasks resolved by the rules (the target row); the same tasks
forced onto the 50-model policy (worst case: every model a candidate); the RPC mix on the
shipped `config/router.yaml`.

Cold start: spawn `routing-sidecar serve` on a fresh SQLite file, poll grpc.health.v1
(`routing_sidecar.v1.Router`) every 5 ms until SERVING; {s['startup_repeats']} runs, median.
Memory: VmRSS / VmHWM from `/proc/PID/status` right after start and after the RPC load.
"""


def markdown(res: Results) -> str:
    """The docs/benchmarks.md page."""
    machine = md_table(["", ""], [[k, v] for k, v in res.machine.items()])
    s = res.settings
    return f"""\
# Benchmarks

Generated by `make bench` (`python -m bench.latency`, the code in `bench/latency/`); re-run to
refresh (numbers are from one machine: compare ratios and orders of magnitude, not absolute
figures across machines).

- Command: `{res.command}`
- Date: {res.date}
- Duration: {res.duration_s:.0f} s (this page's latency sections)
- Machine: {machine_line(res)}

## Headline

{headline_markdown(res)}

## Machine

{machine}

## Targets (not assertions)

{chr(10).join(f"- {v}" for v in verdicts(res))}

## Route RPC vs the no-op gRPC service

{md_table(RPC_HEAD, rpc_rows(res))}

## Core selection

{md_table(CORE_HEAD, core_rows(res))}

## RouteStream: one stream vs unary Route

One RouteStream per server, a writer task keeping {s['window']} requests in flight while a
reader task collects the answers; {s['stream_rounds']} rounds of {s['stream_requests']}
requests, servers interleaved, after {s['warmup']} warm-up requests, each stream round followed
by {s['stream_requests'] // 4} unary Routes at concurrency 1 on the same server (the yardstick,
taken in alternation with the stream so noise weighs on both alike). Latency is per message,
written to answered.

{md_table(STREAM_HEAD, stream_rows(res))}

## Bytes on disk per decision

{footprint_text(res)}.

A fresh `sidecar` on an empty store takes {s['footprint_first']} Routes at concurrency 32,
rests {s['footprint_rest_s']} s (the checkpointer copies the WAL back five times a second),
then {s['footprint_second']} more Routes and the same rest. Per decision: the growth of the
store file between the two rests, over the decisions the store gained (counted in
`model_routing_decisions`); the WAL's size is sampled every 20 ms throughout.

## Cold start and memory

{md_table(START_HEAD, startup_rows(res))}

SQLite store after the load: {_stores(res)}.

## Method

{_method(res)}"""
