"""The headline table: each figure of the speed and footprint targets, measured in one run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.latency.rpc import Summary
from bench.latency.stream import WINDOW
from bench.latency.tables import md_table, text_table

if TYPE_CHECKING:
    from bench.latency.report import Results

NOOP, SIDECAR, TRACED = "noop", "sidecar", "sidecar-traced"
LATENCY_RATIO = 1.5  # Route p50 and p99 over the no-op's, concurrency 1
THROUGHPUT_RATIO = 0.6  # Route/s over the no-op's, concurrency 32
STREAM_RATIO = 3.0  # decisions/s on one RouteStream over unary Route/s at concurrency 1
TRACING_RATIO = 1.15  # Route p50 with tracing on over off, concurrency 32
BYTES_PER_DECISION = 1024
WAL_BYTES = 64 * 1024 * 1024
COLD_START_S = 0.4
MIB = 1024 * 1024
HEAD = ["figure", "measured", "target", "met"]


@dataclass(frozen=True)
class Row:
    """One figure: what was measured (a ratio or a size), its target, and whether it is met."""

    figure: str
    measured: str
    target: str
    met: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        """yes / no / not measured."""
        return "not measured" if self.met is None else ("yes" if self.met else "no")


def _find(rows: Sequence[Summary], target: str, concurrency: int | None = None) -> Summary | None:
    for s in rows:
        if s.target == target and (concurrency is None or s.concurrency == concurrency):
            return s
    return None


def per_round(over: Sequence[float], under: Sequence[float]) -> str:
    """"; per round A-Bx": the ratio taken round by round (the rounds of the two are
    interleaved, so round i of one ran beside round i of the other), or "" with fewer than
    two rounds. The spread says how far one run's figure can be trusted."""
    ratios = [a / b for a, b in zip(over, under, strict=False) if b]
    if len(ratios) < 2:
        return ""
    return f"; per round {min(ratios):.2f}-{max(ratios):.2f}x"


def latency_row(res: Results) -> Row:
    """Route p50 / p99 over the no-op's at concurrency 1."""
    figure = "Route p50 / p99 vs no-op, concurrency 1"
    target = f"<= {LATENCY_RATIO}x / {LATENCY_RATIO}x"
    side, noop = _find(res.rpc, SIDECAR, 1), _find(res.rpc, NOOP, 1)
    if side is None or noop is None:
        return Row(figure, "-", target, None)
    p50, p99 = side.p50_us / noop.p50_us, side.p99_us / noop.p99_us
    return Row(figure, f"{p50:.2f}x / {p99:.2f}x ({side.p50_us:.0f} / {side.p99_us:.0f} µs vs "
               f"{noop.p50_us:.0f} / {noop.p99_us:.0f} µs)"
               f"{per_round(side.round_p50_us, noop.round_p50_us)} (p50)", target,
               p50 <= LATENCY_RATIO and p99 <= LATENCY_RATIO)


def throughput_row(res: Results) -> Row:
    """Route/s over the no-op's at concurrency 32."""
    figure, target = "Route throughput vs no-op, concurrency 32", f">= {THROUGHPUT_RATIO}x"
    side, noop = _find(res.rpc, SIDECAR, 32), _find(res.rpc, NOOP, 32)
    if side is None or noop is None or not noop.rps:
        return Row(figure, "-", target, None)
    r = side.rps / noop.rps
    return Row(figure, f"{r:.2f}x ({side.rps:.0f} vs {noop.rps:.0f} req/s)"
               f"{per_round(side.round_rps, noop.round_rps)}", target,
               r >= THROUGHPUT_RATIO)


def stream_row(res: Results) -> Row:
    """Decisions/s on one RouteStream over unary Route/s at concurrency 1, same sidecar."""
    figure = "RouteStream decisions/s on one stream vs unary Route/s at concurrency 1"
    target = f">= {STREAM_RATIO:.0f}x"
    stream, unary = _find(res.stream, SIDECAR, WINDOW), _find(res.stream, SIDECAR, 1)
    if stream is None or unary is None or not unary.rps:
        return Row(figure, "-", target, None)
    r = stream.rps / unary.rps
    return Row(figure, f"{r:.2f}x ({stream.rps:.0f} vs {unary.rps:.0f} decisions/s, window "
               f"{stream.concurrency}){per_round(stream.round_rps, unary.round_rps)}", target,
               r >= STREAM_RATIO)


def tracing_row(res: Results) -> Row:
    """Route p50 and time per Route (1 / throughput), tracing on over off, concurrency 32."""
    figure = ("tracing on vs off, concurrency 32 (batch exporter to a local OTLP receiver)")
    target = f"<= {TRACING_RATIO}x"
    on, off = _find(res.rpc, TRACED, 32), _find(res.rpc, SIDECAR, 32)
    if on is None or off is None:
        return Row(figure, "-", target, None)
    p50 = on.p50_us / off.p50_us
    per_route = off.rps / on.rps if on.rps else float("inf")  # at saturation: CPU per Route
    spans = res.spans.get(TRACED)
    got = "spans received: unknown" if spans is None else f"{spans} spans received"
    return Row(figure, f"{p50:.2f}x p50, {per_route:.2f}x time per Route (req/s "
               f"{on.rps:.0f} vs {off.rps:.0f}){per_round(off.round_rps, on.round_rps)} (time "
               f"per Route); p99 {on.p99_us / off.p99_us:.2f}x; {got}",
               target, p50 <= TRACING_RATIO and per_route <= TRACING_RATIO and bool(spans))


def footprint_row(res: Results) -> Row:
    """Store growth per decision once checkpointed, and the WAL's largest size."""
    figure = ("bytes on disk per decision (store + WAL, steady state) and WAL size")
    target = "<= 1 KB, WAL <= 64 MB"
    f = res.footprint
    if f is None or not f.decisions:
        return Row(figure, "-", target, None)
    per = f.db_bytes_per_decision
    return Row(figure, f"{per:.0f} B/decision in the store (store + WAL files grew "
               f"{f.bytes_per_decision:.0f} B/decision), WAL {f.after.wal_bytes / MIB:.1f} MB "
               f"at the end, {f.wal_max_bytes / MIB:.1f} MB at most", target,
               per <= BYTES_PER_DECISION and f.wal_max_bytes <= WAL_BYTES)


def cold_start_row(res: Results) -> Row:
    """The sidecar's median cold start to SERVING, beside the no-op's."""
    figure, target = "cold start to SERVING (vs no-op server start)", f"<= {COLD_START_S} s"
    by_name = {s.name: s for s in res.startup}
    side, noop = by_name.get(SIDECAR), by_name.get(NOOP)
    if side is None or noop is None:
        return Row(figure, "-", target, None)
    return Row(figure, f"{side.median_s:.2f} s (no-op {noop.median_s:.2f} s: "
               f"{side.median_s / noop.median_s:.1f}x)", target, side.median_s <= COLD_START_S)


def rows(res: Results) -> list[Row]:
    """The six headline figures, in the order of the targets."""
    return [latency_row(res), throughput_row(res), stream_row(res), tracing_row(res),
            footprint_row(res), cold_start_row(res)]


def cells(table: Sequence[Row]) -> list[list[str]]:
    """The rows as table cells: figure, measured, target, met."""
    return [[r.figure, r.measured, r.target, r.verdict] for r in table]


def machine_line(res: Results) -> str:
    """CPU model, cores, Python and OS on one line."""
    m = res.machine
    return f"{m['CPU']}, {m['Cores']}, {m['Python']}, {m['OS']} (kernel {m['Kernel']})"


def headline_console(res: Results) -> str:
    """The headline table for the terminal, with the command and the machine."""
    return (f"Headline: `{res.command}` on {machine_line(res)}\n\n"
            + text_table(HEAD, cells(rows(res))))


def headline_markdown(res: Results) -> str:
    """The headline section of docs/benchmarks.md."""
    return (f"{md_table(HEAD, cells(rows(res)))}\n\n"
            f"Measured by `{res.command}` on {machine_line(res)}; every ratio is of two servers "
            "measured side by side in this one run. 1 KB = 1024 B, 1 MB = 2^20 B.\n\n"
            + HEADLINE_METHOD)


HEADLINE_METHOD = """\
- Route vs no-op: `sidecar` against the no-op server, same client, same requests, rounds
  interleaved (the Route RPC section); p50 and p99 over every call at concurrency 1, and
  throughput (calls / summed round time) at concurrency 32. Met when both p50 and p99 are.
  The sidecar serves on uvloop (`server.event_loop: auto`), the no-op server on asyncio's own
  loop, the stock grpc.aio setup; the instructions section counts both on both loops.
- RouteStream: decisions/s on one stream to `sidecar` (a writer keeping 64 requests in
  flight, a reader collecting the answers), over the same sidecar's unary Route/s at
  concurrency 1 in rounds alternating with the stream's (the RouteStream section).
- Tracing: `sidecar-traced` (batch exporter to a no-op OTLP receiver process) over `sidecar`
  at concurrency 32: Route p50, and time per Route (the inverse of throughput: at this
  concurrency the CPU a Route costs). Met when both are, and the receiver got spans.
- "per round A-Bx": the same ratio taken round by round (round i of one server ran next to
  round i of the other); the verdict is on the pooled figure, the spread is how far one run's
  figure can be trusted (a target inside the spread is met on some rounds, not others).
- Bytes on disk: a fresh `sidecar`'s store growth per decision between two rests, each after
  the checkpointer has copied the WAL back, so every decision written is in the store file.
  The WAL is a bounded buffer beside it, judged at the largest size seen during the load (its
  size at a rest depends on where in its cycle the load stopped, so the growth of both files
  together, shown beside, carries that noise).
- Cold start: median of spawn to SERVING of `sidecar` on a new store (every 5 ms a TCP connect
  until the port listens, then grpc.health.v1 on a channel opened then), beside the no-op
  server's; the target is the sidecar's own time."""
