"""`routing-sidecar fake-provider` as a real process, and config/demo.yaml against it."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
import yaml

from routing_sidecar.app import Sidecar
from routing_sidecar.config import load_config, parse_config
from routing_sidecar.domain import AttemptStatus
from routing_sidecar.providers.registry import ProviderRegistry
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import ROOT, free_port
from tests.fakes import collect, expected_answer, failure, provider_call

BIN = Path(sys.executable).parent / "routing-sidecar"
DEMO = ROOT / "config" / "demo.yaml"


def start(listen: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN), "fake-provider", "--listen", listen],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def running() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    proc = start(f"127.0.0.1:{port}")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the port is bound
        assert line.strip() == f"fake provider listening on http://127.0.0.1:{port}", line
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_both_formats_and_exits_0_on_a_signal(
        running: tuple[str, subprocess.Popen[str]], sig: signal.Signals) -> None:
    url, proc = running
    with httpx.Client(base_url=url, timeout=10) as http:
        whole = http.post("/v1/messages", json={
            "model": "fake-ok", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hello there"}]})
        assert whole.status_code == 200 and whole.json()["usage"]["input_tokens"] == 2
        with http.stream("POST", "/v1/chat/completions", json={
                "model": "fake-tokens-3", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            lines = [ln for ln in streamed.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and len(lines) == 3 + 2
        limited = http.post("/v1/chat/completions", json={"model": "fake-429-2",
                                                          "messages": []})
        assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
        records = http.get("/_fake/requests").json()
        assert [r["model"] for r in records] == ["fake-ok", "fake-tokens-3", "fake-429-2"]
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def test_a_taken_port_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start(f"127.0.0.1:{port}")
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert out == ""
    assert err.splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: "
                                "Address already in use"]


def test_a_malformed_listen_address_is_refused() -> None:
    proc = subprocess.run([str(BIN), "fake-provider", "--listen", "nowhere"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: --listen: expected HOST:PORT, got 'nowhere'"]


# --- config/demo.yaml ----------------------------------------------------------------------

def test_demo_config_validates_and_points_at_the_fake() -> None:
    proc = subprocess.run([str(BIN), "validate", str(DEMO)], capture_output=True, text=True,
                          timeout=20)
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr
    cfg = load_config(DEMO)
    assert cfg.providers
    for name, p in cfg.providers.items():
        assert p.base_url is not None and urlsplit(p.base_url).netloc == "127.0.0.1:9900", name
        assert p.api_key_file or p.api_key_env, name
    for name, m in cfg.models.items():
        assert m.provider in cfg.providers and m.upstream_model, name


def test_every_demo_model_answers_through_the_fake(
        running: tuple[str, subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = running
    port = urlsplit(url).port
    monkeypatch.chdir(ROOT)  # the demo's api_key_file is relative to the repo root
    cfg = parse_config(DEMO.read_text().replace("127.0.0.1:9900", f"127.0.0.1:{port}"),
                       "demo")
    ex = cfg.execution_settings()
    registry = ProviderRegistry.from_settings(ex, environ={})

    async def run() -> None:
        try:
            for model, spec in cfg.models.items():
                client = registry.get(spec.provider)
                assert client is not None and client.has_credentials(), model
                call = provider_call(ex.upstream_model(model))
                if model == "grok-4":  # the provider that is down
                    _, exc = await failure(client.stream(call))
                    assert exc.status is AttemptStatus.TRANSIENT_ERROR
                    assert exc.retry_after_s == 1.0
                    continue
                if model == "gpt-5-mini":  # fails once, then answers
                    _, exc = await failure(client.stream(call))
                    assert exc.retryable
                texts, end = await collect(client.stream(call))
                assert "".join(texts) == expected_answer(ex.upstream_model(model)), model
                if model == "deepseek-v3.2":
                    assert end.usage.cost_micros == 90
        finally:
            await registry.aclose()

    asyncio.run(run())
    records = httpx.get(f"{url}/_fake/requests", timeout=10).json()
    sent = {r["headers"].get("authorization") or r["headers"].get("x-api-key") for r in records}
    key = (ROOT / "config" / "demo.key").read_text().strip()
    assert sent == {f"Bearer {key}", key}  # both wire formats, the key from api_key_file


async def test_the_sidecar_serves_the_demo_config(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEMO.read_text())
    raw["store"]["path"] = str(tmp_path / "demo.db")
    raw["server"]["listen"] = "127.0.0.1:0"
    raw["telemetry"] = {"exporter": "none", "admin_listen": ""}
    car = Sidecar(parse_config(yaml.safe_dump(raw), "demo"))
    await car.start()
    try:
        async with grpc.aio.insecure_channel(car.address) as ch:
            decision = await pb_grpc.RouterStub(ch).Route(pb.RouteRequest(
                task_id="t-1", task_type="fix_bug", estimated_input_tokens=500,
                max_output_tokens=500))
        assert decision.status == pb.DECISION_STATUS_ROUTED
        assert decision.model in raw["policies"]["code"]["models"]
    finally:
        await car.stop()
