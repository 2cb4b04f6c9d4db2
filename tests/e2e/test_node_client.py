"""A Node client built from router.proto alone talks to the real sidecar process.

Checks the contract across languages: enums as names, int64 money as decimal strings,
RouteStream order, and the INVALID_ARGUMENT status with a field-named message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT
from tests.e2e.test_process import running, wait_serving  # noqa: F401  (fixture, helper)

CLIENT_DIR = Path(__file__).resolve().parent / "node_client"
PROTO = ROOT / "protos" / "routing_sidecar" / "v1" / "router.proto"
INVALID_ARGUMENT = 3


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise AssertionError(
            f"`{name}` is not on PATH: this test needs Node.js and npm "
            "(CI installs them via .ci/run; locally: apt-get install nodejs npm)"
        )
    return exe


def _ensure_node_modules(npm: str) -> None:
    if (CLIENT_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir() and (
        CLIENT_DIR / "node_modules" / "@grpc" / "proto-loader"
    ).is_dir():
        return
    out = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=CLIENT_DIR, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, f"npm ci failed:\n{out.stdout}\n{out.stderr}"


def test_node_client_routes_streams_and_sees_invalid_argument(
    running: tuple[str, subprocess.Popen[bytes]],  # noqa: F811
) -> None:
    node, npm = _tool("node"), _tool("npm")
    _ensure_node_modules(npm)
    target, proc = running

    out = subprocess.run(
        [node, str(CLIENT_DIR / "client.js"), str(PROTO), target],
        cwd=CLIENT_DIR, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, f"node client failed:\n{out.stderr}"
    result = json.loads(out.stdout)

    route = result["route"]
    assert route["policy"] == "code"
    assert route["status"] == "DECISION_STATUS_ROUTED"
    assert route["model"]
    assert route["fallbacks"]
    assert route["alternatives"]
    assert sum(1 for a in route["alternatives"] if a["chosen"]) == 1
    chosen = next(a for a in route["alternatives"] if a["chosen"])
    assert chosen["model"] == route["model"]
    # int64 arrives as a decimal string (longs: String), never a lossy JS number.
    cost = route["estimated_cost_micros"]
    assert isinstance(cost, str) and int(cost) > 0

    stream = result["stream"]
    assert len(stream) == 5
    assert [d["task_id"].rsplit("-", 1)[1] for d in stream] == [f"s{i}" for i in range(5)]
    assert [d["policy"] for d in stream] == ["code", "normal", "normal", "ops", "deep_research"]
    assert all(d["status"] == "DECISION_STATUS_ROUTED" for d in stream)
    assert len({d["decision_id"] for d in stream} | {route["decision_id"]}) == 6

    bad = result["bad"]
    assert bad["code"] == INVALID_ARGUMENT
    assert bad["details"].startswith("priority:"), bad["details"]

    assert proc.poll() is None, "sidecar died while serving the Node client"
