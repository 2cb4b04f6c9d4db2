"""`make bench` on a tiny real run: the headline table comes first, complete and consistent.

The harness runs as `make bench` runs it (a process of its own starting real sidecars, the
no-op server and the OTLP receiver on loopback), only with small rounds; the test reads the
page it writes and what it prints, never the numbers themselves.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.latency import execute, headline, instructions, phases, trees
from bench.procs import REPO

FIGURES = [
    "Route p50 / p99 vs no-op, concurrency 1",
    "Route throughput vs no-op, concurrency 32",
    "RouteStream decisions/s on one stream vs unary Route/s at concurrency 1",
    "tracing on vs off, concurrency 32 (batch exporter to a local OTLP receiver)",
    "bytes on disk per decision (store + WAL, steady state) and WAL size",
    "cold start to SERVING (vs no-op server start)",
]
TINY = ["--quick", "--no-execute", "--no-cache", "--requests", "60", "--rounds", "2",
        "--stream-requests", "150", "--footprint", "200", "400", "--core-calls", "500",
        "--phase-calls", "200", "--instruction-routes", "20"]
NUMBER = r"(\d+(?:\.\d+)?)"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """What a tiny `python -m bench.latency` run printed, and the page it wrote."""
    out = tmp_path_factory.mktemp("bench") / "benchmarks.md"
    proc = subprocess.run([sys.executable, "-m", "bench.latency", *TINY, "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, out.read_text()


def table_after(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after `heading`, header row included."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return [rows[0], *rows[2:]]  # without the --- row


def test_the_headline_is_printed_first_with_the_command_and_machine(
    tiny_run: tuple[str, str],
) -> None:
    stdout, _page = tiny_run
    first = stdout.splitlines()[0]
    assert first.startswith("Headline: `python -m bench.latency --quick")
    assert "CPython" in first and "logical" in first
    assert stdout.splitlines()[2].split() == headline.HEAD


def test_the_page_opens_with_every_headline_figure_measured(tiny_run: tuple[str, str]) -> None:
    _stdout, page = tiny_run
    assert page.index("## Headline") < page.index("## Machine") < page.index("## Route RPC")
    head, *rows = table_after(page, "## Headline")
    assert head == headline.HEAD
    assert [r[0] for r in rows] == FIGURES
    for figure, measured, target, met in rows:
        assert re.match(NUMBER, measured), (figure, measured)
        assert re.match(r"(<=|>=) \d", target), (figure, target)
        assert met in ("yes", "no"), (figure, met)


def _ratio(cell: str) -> float:
    m = re.match(NUMBER + "x", cell)
    assert m, cell
    return float(m.group(1))


def test_each_ratio_is_of_the_figures_measured_beside_it(tiny_run: tuple[str, str]) -> None:
    _stdout, page = tiny_run
    rows = {r[0]: r for r in table_after(page, "## Headline")[1:]}
    head, *rpc = table_after(page, "## Route RPC vs the no-op")
    by = {(r[0], r[1]): dict(zip(head, r, strict=True)) for r in rpc}
    noop, side = by[("noop", "32")], by[("sidecar", "32")]
    throughput = rows[FIGURES[1]]
    assert _ratio(throughput[1]) == pytest.approx(
        float(side["req/s"]) / float(noop["req/s"]), abs=0.011)
    # The verdict follows from the measured ratio and the target, both ways.
    assert (throughput[3] == "yes") == (_ratio(throughput[1]) >= headline.THROUGHPUT_RATIO)
    stream_head, *streams = table_after(page, "## RouteStream")
    kinds = {r[0]: dict(zip(stream_head, r, strict=True)) for r in streams}
    stream, unary = kinds["sidecar, one stream"], kinds["sidecar, unary c=1"]
    assert _ratio(rows[FIGURES[2]][1]) == pytest.approx(
        float(stream["decisions/s"]) / float(unary["decisions/s"]), abs=0.011)
    assert _ratio(stream["stream / unary"]) == _ratio(rows[FIGURES[2]][1])
    assert int(stream["calls"]) > 0 and stream["errors"] == "0"


def test_each_pooled_ratio_lies_within_its_per_round_spread(tiny_run: tuple[str, str]) -> None:
    # Calls over summed round time: the pooled ratio is a weighted mean of the rounds' own.
    _stdout, page = tiny_run
    rows = {r[0]: r[1] for r in table_after(page, "## Headline")[1:]}
    pooled = {
        FIGURES[1]: _ratio(rows[FIGURES[1]]),
        FIGURES[2]: _ratio(rows[FIGURES[2]]),
        FIGURES[3]: float(re.search(NUMBER + r"x time per Route", rows[FIGURES[3]])
                          .group(1)),  # type: ignore[union-attr]
    }
    for figure, ratio in pooled.items():
        spread = re.search(rf"per round {NUMBER}-{NUMBER}x", rows[figure])
        assert spread, rows[figure]
        low, high = map(float, spread.groups())
        assert low - 0.011 <= ratio <= high + 0.011, (figure, rows[figure])
    assert re.search(rf"per round {NUMBER}-{NUMBER}x \(p50\)", rows[FIGURES[0]]), rows[FIGURES[0]]


def test_the_footprint_and_tracing_rows_say_what_they_saw(tiny_run: tuple[str, str]) -> None:
    _stdout, page = tiny_run
    rows = {r[0]: r for r in table_after(page, "## Headline")[1:]}
    per, wal_end, wal_max = map(float, re.match(
        NUMBER + r" B/decision .*WAL " + NUMBER + " MB at the end, " + NUMBER + " MB at most",
        rows[FIGURES[4]][1]).groups())  # type: ignore[union-attr]
    assert per > 0 and 0 < wal_end <= wal_max
    spans = re.search(r"(\d+) spans received", rows[FIGURES[3]][1])
    assert spans and int(spans.group(1)) > 0, rows[FIGURES[3]]


def test_the_steps_of_a_route_are_timed_and_add_up(tiny_run: tuple[str, str]) -> None:
    _stdout, page = tiny_run
    rows = table_after(page, phases.SECTION)
    assert rows[0] == ["step", "µs", "share", "what"]
    steps = {r[0]: float(r[1]) for r in rows[1:] if not r[0].startswith("**")}
    assert list(steps) == [name for name, _ in phases.STEPS]
    assert all(us > 0 for us in steps.values())
    total = next(r for r in rows if r[0] == "**sum**")[1].strip("*")
    assert float(total) == pytest.approx(sum(steps.values()), abs=0.2)
    inner = {r[0]: float(r[1]) for r in table_after(page, "Timed inside those steps")[1:]}
    assert inner["commit > SQLite transaction"] > 0
    # A call timed inside a step takes less than the step it is part of.
    assert inner["begin > view and core decide()"] < steps["decide and reserve"] * 1.5


def test_the_server_instructions_per_route_are_counted(tiny_run: tuple[str, str]) -> None:
    _stdout, page = tiny_run
    assert instructions.available(), "valgrind is on every machine this project runs on"
    rows = {r[0]: r for r in table_after(page, instructions.SECTION)[1:]}
    assert list(rows) == ["no-op", "no-op on uvloop", "sidecar", "sidecar traced",
                          "sidecar on asyncio"]
    assert rows["no-op"][2] == rows["no-op"][3] == rows["no-op on uvloop"][3] == "1.00x"
    per_route = {name: float(r[1].removesuffix(" k").replace(",", "")) for name, r in rows.items()}
    assert per_route["no-op"] > 100  # a gRPC round trip is hundreds of thousands
    # Deciding, reserving and committing is more work than answering a stored message.
    for sidecar, noop in (("sidecar", "no-op on uvloop"), ("sidecar on asyncio", "no-op")):
        assert per_route[sidecar] > per_route[noop] * 1.5
        ratio = per_route[sidecar] / per_route[noop]
        assert float(rows[sidecar][3].removesuffix("x")) == pytest.approx(ratio, rel=0.005)
    # A span per Route (made, encoded, exported) is work on top of the same Route.
    assert per_route["sidecar traced"] > per_route["sidecar"]
    assert "Tracing every Route: " in page.split(instructions.SECTION, 1)[1]
    # uvloop runs the same calls in fewer instructions than asyncio's own loop.
    assert per_route["no-op on uvloop"] < per_route["no-op"]
    assert all(r[4].endswith("%") for r in rows.values())
    # The same counts by library: a column per server, adding up to its count.
    split = table_after(page, instructions.PARTS_HEADING)
    assert split[0] == ["part", *rows]
    by_part = {r[0]: [float(v.removesuffix(" k").replace(",", "")) for v in r[1:]]
               for r in split[1:]}
    for i, name in enumerate(rows):
        total = sum(values[i] for values in by_part.values())
        assert total == pytest.approx(per_route[name], abs=len(by_part))  # each rounded to 1 k
    sidecar, noop = list(rows).index("sidecar"), list(rows).index("no-op on uvloop")
    assert by_part["SQLite"][sidecar] > 0 == by_part["SQLite"][noop]  # only the sidecar stores
    assert max(by_part, key=lambda part: by_part[part][sidecar]) == "Python interpreter"


def test_an_extra_source_tree_must_hold_the_package(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.latency.instructions", "--source", f"x={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--source wants NAME=DIR" in proc.stderr


def test_two_source_trees_are_timed_side_by_side() -> None:
    # This checkout's own tree as the other one: both serve, both are loaded every round.
    proc = subprocess.run(
        [sys.executable, "-m", "bench.latency.trees", "--source", f"same={REPO / 'src'}",
         "--requests", "30", "--rounds", "2", "--stream-requests", "60", "--stream-rounds", "1",
         "--warmup", "10"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("command: python -m bench.latency.trees --source same=")
    for tree in (trees.THIS, "same"):
        mine = [line for line in lines if line.strip().startswith(tree)]
        assert [("Route c=1 " in s, "Route c=32" in s, "RouteStream" in s) for s in mine] == [
            (True, False, False), (False, True, False), (False, False, True)], mine
        assert all(line.endswith("errors=0") for line in mine)
        assert all(" 0 req/s" not in line for line in mine)


def test_an_extra_tree_for_timing_must_hold_the_package(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.latency.trees", "--source", f"x={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--source wants NAME=DIR" in proc.stderr


def test_bench_run_is_the_same_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    assert "--stream-requests" in proc.stdout and "--footprint" in proc.stdout


def test_the_execute_phase_starts_its_no_op_server_as_make_bench_does(tmp_path: Path) -> None:
    # The phase the tiny run skips: its helper process must find the bench package too.
    port = execute._free_port()
    log = tmp_path / "noop.log"
    argv = [sys.executable, "-m", "bench.latency.execute", "--serve-noop", f"127.0.0.1:{port}"]
    with execute._process(argv, log) as proc:
        execute._wait_port(port, proc, log, timeout_s=30)
        assert proc.poll() is None
