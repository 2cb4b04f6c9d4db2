"""The servers under test: named sidecar variants and the no-op baseline, as subprocesses."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procs import (
    REPO,
    ROUTER_SERVICE,
    free_port,
    log_tail,
    sidecar_executable,
    spawn,
    wait_serving,
)

BASE_CONFIG = REPO / "config" / "router.yaml"
# Budgets are scaled up so that a long run never exhausts them: every decision still
# reserves on every scope, but the ledger's answers (and so the work) stay the same.
BUDGET_HEADROOM = 1000


@dataclass(frozen=True)
class Variant:
    """A named sidecar configuration, benchmarked against the same no-op baseline."""

    name: str
    description: str
    # RouteRequest fields to override on every request sent to this variant.
    request: Mapping[str, Any] = field(default_factory=dict)
    # Edits to the parsed config/router.yaml copy, in place.
    config: Callable[[dict[str, Any]], None] | None = None
    # Extra environment variables for the sidecar process (e.g. tracing exporters).
    env: Mapping[str, str] = field(default_factory=dict)
    # Start a no-op OTLP/gRPC receiver process and point OTEL_EXPORTER_OTLP_ENDPOINT at it.
    otlp_sink: bool = False
    # Judge this variant against another one (not only the no-op): ratio target for p50/p99.
    compare_to: str | None = None
    compare_target: float = 1.15


def _traced(raw: dict[str, Any]) -> None:
    # Endpoint from OTEL_EXPORTER_OTLP_ENDPOINT (the harness's receiver); the SDK's defaults
    # otherwise: parent-based always-on sampling, batch span processor.
    raw.setdefault("telemetry", {})["exporter"] = "otlp_grpc"


# Add variants here (e.g. tracing on/off through `env`, redis store through `config`);
# `python -m bench.latency --variants NAME,...` picks some; --quick runs QUICK_VARIANTS.
VARIANTS: tuple[Variant, ...] = (
    Variant("sidecar", "store and budgets on, dry_run=false"),
    Variant("sidecar-dry", "dry_run=true: decides and audits, reserves nothing",
            request={"dry_run": True}),
    Variant("sidecar-traced", "as `sidecar` with tracing on: a server span per Route with the "
            "decision's attributes and an event per rejected candidate, batch-exported over "
            "OTLP/gRPC to a no-op receiver process (`bench/latency/otlp_sink.py`)",
            config=_traced, otlp_sink=True, compare_to="sidecar"),
)
# Enough for every headline figure: the plain sidecar and tracing on against it.
QUICK_VARIANTS = ("sidecar", "sidecar-traced")


@dataclass(frozen=True)
class Running:
    """A server started by the harness."""

    name: str
    address: str
    proc: subprocess.Popen[bytes]
    log: Path
    startup_s: float


def write_config(variant: Variant, store_path: Path, out: Path) -> Path:
    """A copy of config/router.yaml with the store in `store_path` and the variant's edits."""
    raw: dict[str, Any] = yaml.safe_load(BASE_CONFIG.read_text())
    raw.setdefault("store", {})["path"] = str(store_path)
    raw.setdefault("server", {})["grace_period_s"] = 1
    # Metrics stay on in every variant, each on a port of its own.
    raw.setdefault("telemetry", {})["admin_listen"] = "127.0.0.1:0"
    for budget in raw.get("budgets", []):
        if budget.get("scope") != "task":
            budget["limit_usd"] = budget["limit_usd"] * BUDGET_HEADROOM
    if variant.config:
        variant.config(raw)
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def tree_env(src: Path | None) -> dict[str, str]:
    """The environment that runs the sidecar from source tree `src` (None: this checkout)."""
    return {"PYTHONPATH": os.pathsep.join([str(src), str(REPO)])} if src else {}


def sidecar_argv(config: Path, port: int) -> list[str]:
    """Command line of a sidecar on 127.0.0.1:port."""
    return [sidecar_executable(), "serve", "--config", str(config),
            "--listen", f"127.0.0.1:{port}"]


def noop_argv(port: int, decision_file: Path | None) -> list[str]:
    """Command line of the no-op Router on 127.0.0.1:port."""
    argv = [sys.executable, "-m", "bench.latency.noop_server", "--port", str(port)]
    return argv + (["--decision-file", str(decision_file)] if decision_file else [])


def start(
    stack: contextlib.ExitStack, name: str, argv_for: Callable[[int], list[str]], workdir: Path,
    env: Mapping[str, str] | None = None,
) -> Running:
    """Spawn a server (stopped when `stack` closes) and wait until it reports SERVING."""
    port = free_port()
    log = workdir / f"{name}.log"
    proc = stack.enter_context(spawn(argv_for(port), log, env))
    address = f"127.0.0.1:{port}"
    waited = wait_serving(address, proc, log, ROUTER_SERVICE)
    return Running(name, address, proc, log, waited)


def start_sidecar(
    stack: contextlib.ExitStack, variant: Variant, workdir: Path, store_dir: Path,
    name: str | None = None,
) -> Running:
    """Start one sidecar variant with its own config copy and SQLite file `<name>.db`.

    A variant with `otlp_sink` exports to a receiver whose log is `sink_log(workdir, name)`.
    """
    name = name or variant.name
    config = write_config(variant, store_dir / f"{name}.db", workdir / f"{name}.yaml")
    env = dict(variant.env)
    if variant.otlp_sink:
        sink = start_otlp_sink(stack, f"{name}-otlp-sink", workdir)
        env.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{sink.address}")
    return start(stack, name, lambda port: sidecar_argv(config, port), workdir, env)


def sink_log(workdir: Path, name: str) -> Path:
    """The log of the OTLP receiver started for the sidecar `name`."""
    return workdir / f"{name}-otlp-sink.log"


def spans_received(log: Path) -> int | None:
    """Spans the receiver reported at exit (its last line), or None if it did not say."""
    for line in reversed(log_tail(log).splitlines()):
        if line.startswith("received "):
            return int(line.split("(", 1)[1].split()[0])
    return None


def start_otlp_sink(stack: contextlib.ExitStack, name: str, workdir: Path) -> Running:
    """Start a no-op OTLP/gRPC receiver (stopped when `stack` closes)."""
    port = free_port()
    log = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "bench.latency.otlp_sink", "--port", str(port)]
    proc = stack.enter_context(spawn(argv, log))
    address = f"127.0.0.1:{port}"
    return Running(name, address, proc, log, wait_serving(address, proc, log, ""))


def start_noop(stack: contextlib.ExitStack, decision_file: Path | None, workdir: Path) -> Running:
    """Start the no-op baseline answering the Decision in `decision_file`."""
    return start(stack, "noop", lambda port: noop_argv(port, decision_file), workdir)
