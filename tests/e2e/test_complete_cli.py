"""`routing-sidecar complete` as a newcomer runs it: the fake provider and the sidecar as real
processes with config/demo.yaml (only its ports moved), from the repository root."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from routing_sidecar.calls import ChatMessage, Role
from tests.conftest import ROOT, free_port
from tests.e2e.test_process import wait_serving
from tests.fakes import expected_answer

BIN = Path(sys.executable).parent / "routing-sidecar"
DEMO = ROOT / "config" / "demo.yaml"
PROMPT = "Why does the build fail on Tuesdays?"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("demo")
    fake_port, target = free_port(), f"127.0.0.1:{free_port()}"
    text = DEMO.read_text().replace("127.0.0.1:9900", f"127.0.0.1:{fake_port}")
    raw = yaml.safe_load(text)
    raw["store"]["path"] = str(tmp / "demo.db")
    raw["telemetry"] = {"admin_listen": ""}
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    fake = subprocess.Popen([str(BIN), "fake-provider", "--listen", f"127.0.0.1:{fake_port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # From the repository root, as the README says: the demo's api_key_file is relative to it.
    sidecar = subprocess.Popen([str(BIN), "serve", "--config", str(path), "--listen", target],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert fake.stdout is not None and "listening" in fake.stdout.readline()
        wait_serving(target, sidecar)
        yield target, raw
    finally:
        for proc in (sidecar, fake):
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=20)


def cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "complete", "--target", target, *args],
                          capture_output=True, text=True, timeout=60)


def answer_of(raw: dict[str, Any], model: str, prompt: str = PROMPT) -> str:
    upstream = raw["models"][model]["upstream_model"]
    return expected_answer(upstream, (ChatMessage(Role.USER, prompt),))


def test_a_streamed_answer_and_its_provenance(demo: tuple[str, dict[str, Any]]) -> None:
    target, raw = demo
    out = cli(target, "--task-type", "fix_bug", "--prompt", PROMPT, "--label", "project=demo")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("[") and "under policy code" in lines[0]
    model = lines[0][1:].split(" ")[0]
    assert lines[1] == answer_of(raw, model)
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("# model"))
    assert lines[header + 1].split()[:4] == ["0", model, raw["models"][model]["provider"],
                                             "SUCCESS"]
    assert lines[-1].startswith(f"answered by {model}") and "finish stop" in lines[-1]
    assert out.stderr == ""


def test_json_events_in_order_with_a_fallback(demo: tuple[str, dict[str, Any]]) -> None:
    target, raw = demo
    # Priority 96 claims the reserved tiers: grok-4, whose provider is down, is chosen.
    out = cli(target, "--task-type", "research_market", "--priority", "96", "--prompt", PROMPT,
              "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "decision" and kinds[-1] == "done" and "delta" in kinds
    decision, done = events[0]["decision"], events[-1]["done"]
    assert decision["model"] == "grok-4"
    statuses = [(a["model"], a["status"]) for a in done["attempts"]]
    assert statuses[:3] == [("grok-4", "ATTEMPT_STATUS_TRANSIENT_ERROR")] * 3  # 2 retries
    assert statuses[-1] == (done["model"], "ATTEMPT_STATUS_SUCCESS")
    assert done["model"] != "grok-4" and done["success"] is True
    text = "".join(e["delta"]["text"] for e in events if "delta" in e)
    assert text == answer_of(raw, done["model"])


def test_a_whole_answer_without_streaming(demo: tuple[str, dict[str, Any]]) -> None:
    target, raw = demo
    out = cli(target, "--task-type", "simple_query", "--prompt", "hello", "--no-stream",
              "--system", "be brief")
    assert out.returncode == 0, out.stderr
    model = out.stdout.splitlines()[0][1:].split(" ")[0]
    upstream = raw["models"][model]["upstream_model"]
    expected = expected_answer(upstream, (ChatMessage(Role.SYSTEM, "be brief"),
                                          ChatMessage(Role.USER, "hello")))
    assert out.stdout.splitlines()[1] == expected


def test_a_bad_request_is_one_line_and_exit_1(demo: tuple[str, dict[str, Any]]) -> None:
    target, _ = demo
    out = cli(target, "--task-type", "fix_bug", "--prompt", PROMPT, "--policy", "nope")
    assert out.returncode == 1 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("error: INVALID_ARGUMENT: route.policy:") and "nope" in line
