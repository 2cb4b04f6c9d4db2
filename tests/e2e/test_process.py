"""The real `routing-sidecar` process: serve, route from the CLI, validate, drain on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from routing_sidecar import native
from tests.conftest import DEFAULT_CONFIG, config_dict, free_port, write_config

BIN = Path(sys.executable).parent / "routing-sidecar"


def wait_serving(target: str, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            assert proc.poll() is None, "sidecar exited during start-up"
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise AssertionError("sidecar did not report SERVING in time")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    raw = config_dict(tmp_path)
    target = f"127.0.0.1:{free_port()}"
    path = write_config(tmp_path, raw)
    proc = subprocess.Popen(
        [str(BIN), "serve", "--config", str(path), "--listen", target],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_serving(target, proc)
        yield target, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=30)


def test_cli_route_json_and_table(running: tuple[str, subprocess.Popen[bytes]]) -> None:
    target, _ = running
    out = cli("route", "--target", target, "--task-type", "fix_bug", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["policy"] == "code" and d["status"] == "DECISION_STATUS_ROUTED"
    assert d["fallbacks"] and d["alternatives"]
    table = cli("route", "--target", target, "--task-type", "check_links", "--priority", "10",
                "--label", "project=alpha", "--slot", "w1=claude-haiku-4-5:0.2")
    assert table.returncode == 0, table.stderr
    assert "claude-haiku-4-5" in table.stdout and "slot w1" in table.stdout
    bad = cli("route", "--target", target, "--task-type", "fix_bug", "--priority", "300")
    assert bad.returncode == 1 and "INVALID_ARGUMENT: priority" in bad.stderr
    valued = cli("route", "--target", target, "--task-type", "fix_bug", "--value", "0.05")
    assert valued.returncode == 0, valued.stderr
    assert "value $0.0500" in valued.stdout and "net value" in valued.stdout


def test_sigterm_drains_and_exits_zero(running: tuple[str, subprocess.Popen[bytes]]) -> None:
    _, proc = running
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    logs = proc.stderr.read().decode() if proc.stderr else ""
    assert "shutting down" in logs
    assert "sk-" not in logs
    started = [json.loads(line) for line in logs.splitlines() if '"sidecar started"' in line]
    assert [s["event_loop"] for s in started] == ["uvloop"]  # server.event_loop: auto
    # The compiled modules, where this checkout has them (as this test process runs them).
    assert [s["compiled"] for s in started] == [native.in_use()]


def test_serves_and_drains_on_asyncios_own_loop_when_told(tmp_path: Path) -> None:
    raw = config_dict(tmp_path)
    raw["server"]["event_loop"] = "asyncio"
    target = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [str(BIN), "serve", "--config", str(write_config(tmp_path, raw)), "--listen", target],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_serving(target, proc)
        out = cli("route", "--target", target, "--task-type", "fix_bug", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"] == "DECISION_STATUS_ROUTED"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    logs = proc.stderr.read().decode() if proc.stderr else ""
    started = [json.loads(line) for line in logs.splitlines() if '"sidecar started"' in line]
    assert [s["event_loop"] for s in started] == ["asyncio"]


def test_validate_ok_and_errors_name_the_path(tmp_path: Path) -> None:
    ok = cli("validate", str(DEFAULT_CONFIG))
    assert (ok.returncode, ok.stdout.strip()) == (0, "ok")
    raw = config_dict(tmp_path)
    raw["policies"]["code"]["models"][1] = "gpt-9"
    raw["rules"][0]["policy"] = "missing"
    raw["models"]["gpt-5"]["input_per_mtok"] = -1
    bad = cli("validate", str(write_config(tmp_path, raw, "bad.yaml")))
    assert bad.returncode == 1
    assert "bad.yaml" in bad.stderr
    assert "models.gpt-5.input_per_mtok" in bad.stderr


def test_bad_config_never_starts(tmp_path: Path) -> None:
    raw = config_dict(tmp_path)
    raw["default_policy"] = "nowhere"
    path = write_config(tmp_path, raw)
    out = subprocess.run([str(BIN), "serve", "--config", str(path)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2
    assert "default_policy: unknown policy 'nowhere'" in out.stderr


def test_sighup_reload_keeps_running_config_when_new_one_is_bad(
    running: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    target, proc = running
    path = tmp_path / "router.yaml"
    good = path.read_text()
    path.write_text(good.replace("default_policy: normal", "default_policy: nowhere"))
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    out = cli("route", "--target", target, "--task-type", "fix_bug", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["policy"] == "code"
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert "config reload refused" in (proc.stderr.read().decode() if proc.stderr else "")


def test_cli_budgets_and_report(running: tuple[str, subprocess.Popen[bytes]]) -> None:
    target, _ = running
    routed = cli("route", "--target", target, "--task-type", "fix_bug", "--label",
                 "project=alpha", "--label", "layer=api", "--json")
    assert routed.returncode == 0, routed.stderr
    table = cli("budgets", "--target", target)
    assert table.returncode == 0, table.stderr
    assert "project:alpha" in table.stdout and "global" in table.stdout
    as_json = json.loads(cli("budgets", "--target", target, "--scope", "global", "--json").stdout)
    assert [b["scope"] for b in as_json["budgets"]] == ["global"]
    assert int(as_json["budgets"][0]["reserved_micros"]) > 0
    report = cli("report", "--target", target, "--hours", "1", "--label-key", "layer")
    assert report.returncode == 0, report.stderr
    model = json.loads(routed.stdout)["model"]
    assert model in report.stdout and "label:layer" in report.stdout
