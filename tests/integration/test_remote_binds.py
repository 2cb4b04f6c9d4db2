"""A gRPC port beyond loopback: TLS (and mutual TLS), the bearer token, and refused starts.

Real servers on 0.0.0.0:0 dialled over 127.0.0.1 with real channels; the certificate is made
by openssl for this test run.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from routing_sidecar import cli
from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar.errors import ConfigError
from routing_sidecar.grpc_api import auth
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    d = tmp_path_factory.mktemp("pki")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30)
    (d / "token").write_text(TOKEN + "\n")
    return {"cert": d / "cert.pem", "key": d / "key.pem", "token": d / "token"}


def _cfg(tmp_path: Path, **server: Any) -> Any:
    raw = config_dict(tmp_path)
    raw["server"].update({"listen": "0.0.0.0:0", **server})
    return parse_config(yaml.safe_dump(raw), "test.yaml")


async def _started(cfg: Any) -> Sidecar:
    car = Sidecar(cfg)
    await car.start()
    return car


def _local(car: Sidecar) -> str:
    return f"127.0.0.1:{car.server.port if car.server else 0}"


@pytest.fixture
async def token_car(tmp_path: Path, pki: dict[str, Path]) -> AsyncIterator[Sidecar]:
    """A sidecar on 0.0.0.0 that requires the bearer token (no TLS)."""
    car = await _started(_cfg(tmp_path, token_file=str(pki["token"])))
    try:
        yield car
    finally:
        await car.stop()


def _route() -> pb.RouteRequest:
    return pb.RouteRequest(task_id="remote-1", task_type="fix_bug", priority=50)


@pytest.mark.parametrize("metadata", [
    None, (("authorization", "Bearer wrong-token"),), (("authorization", f"Basic {TOKEN}"),),
    (("authorization", f"Bearer {TOKEN}x"),),
], ids=["none", "wrong", "not_bearer", "longer"])
async def test_a_call_without_the_right_token_is_unauthenticated(
    token_car: Sidecar, metadata: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(_local(token_car)) as ch:
        stub = pb_grpc.RouterStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Route(_route(), metadata=metadata, timeout=5)
        stream = stub.RouteStream(metadata=metadata, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await stream.read()
        with pytest.raises(grpc.aio.AioRpcError) as budgets:
            await stub.GetBudgetStatus(pb.BudgetQuery(), metadata=metadata, timeout=5)
    for err in (unary.value, streamed.value, budgets.value):
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert TOKEN not in (err.details() or "")
    assert token_car.store is not None
    stats = await token_car.store.routing_stats(0.0)
    assert stats.by_model_task == ()  # nothing decided, nothing written
    assert all(TOKEN not in r.getMessage() and TOKEN not in str(vars(r)) for r in caplog.records)


async def test_the_right_token_routes_and_probes_need_none(token_car: Sidecar) -> None:
    async with grpc.aio.insecure_channel(_local(token_car)) as ch:
        decision = await pb_grpc.RouterStub(ch).Route(
            _route(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5)
        assert decision.status == pb.DECISION_STATUS_ROUTED
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(timeout=5)
        await reflect.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = await reflect.read()
        await reflect.done_writing()
        names = {s.name for s in listed.list_services_response.service}
        assert "routing_sidecar.v1.Router" in names


async def test_the_cli_sends_the_token_over_a_plain_channel(
    token_car: Sidecar, pki: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    route = ["route", "--target", _local(token_car), "--task-type", "fix_bug", "--json"]
    try:
        assert await asyncio.to_thread(cli.main, [*route, "--token-file", str(pki["token"])]) == 0
        assert '"DECISION_STATUS_ROUTED"' in capsys.readouterr().out
        auth.use_client_auth(auth.ClientAuth())
        assert await asyncio.to_thread(cli.main, route) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: UNAUTHENTICATED: missing or wrong bearer token")
        assert TOKEN not in err
    finally:
        auth.use_client_auth(auth.ClientAuth())


async def test_tls_with_token_and_the_cli_flags(tmp_path: Path, pki: dict[str, Path]) -> None:
    tls = {"cert_file": str(pki["cert"]), "key_file": str(pki["key"])}
    car = await _started(_cfg(tmp_path, tls=tls, token_file=str(pki["token"])))
    try:
        target = _local(car)
        creds = grpc.ssl_channel_credentials(root_certificates=pki["cert"].read_bytes())
        async with grpc.aio.secure_channel(target, creds) as ch:
            stub = pb_grpc.RouterStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Route(_route(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = await stub.Route(_route(), metadata=(("authorization", f"Bearer {TOKEN}"),),
                                  timeout=5)
            assert ok.status == pb.DECISION_STATUS_ROUTED
        async with grpc.aio.insecure_channel(target) as plain:  # plain text to a TLS port
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=2)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        flags = ["--target", target, "--tls-ca", str(pki["cert"])]
        try:
            assert await asyncio.to_thread(cli.main, ["health", *flags]) == 0
            assert await asyncio.to_thread(
                cli.main, ["route", *flags, "--token-file", str(pki["token"]),
                           "--task-type", "fix_bug"]) == 0
            assert await asyncio.to_thread(
                cli.main, ["budgets", *flags, "--token-file", str(pki["token"])]) == 0
            auth.use_client_auth(auth.ClientAuth())
            assert await asyncio.to_thread(
                cli.main, ["budgets", *flags]) == 1  # the CA alone: UNAUTHENTICATED
        finally:
            auth.use_client_auth(auth.ClientAuth())
    finally:
        await car.stop()


async def test_mutual_tls_needs_a_client_certificate(tmp_path: Path,
                                                    pki: dict[str, Path]) -> None:
    cert, key = pki["cert"].read_bytes(), pki["key"].read_bytes()
    tls = {"cert_file": str(pki["cert"]), "key_file": str(pki["key"]),
           "client_ca_file": str(pki["cert"])}  # the self-signed cert signs itself
    car = await _started(_cfg(tmp_path, tls=tls))
    try:
        anonymous = grpc.ssl_channel_credentials(root_certificates=cert)
        async with grpc.aio.secure_channel(_local(car), anonymous) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.RouterStub(ch).Route(_route(), timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        known = grpc.ssl_channel_credentials(root_certificates=cert, private_key=key,
                                             certificate_chain=cert)
        async with grpc.aio.secure_channel(_local(car), known) as ch:
            ok = await pb_grpc.RouterStub(ch).Route(_route(), timeout=5)
            assert ok.status == pb.DECISION_STATUS_ROUTED
    finally:
        await car.stop()


def test_validate_refuses_a_remote_listen_without_tls_or_token(tmp_path: Path) -> None:
    for listen in ("0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "sidecar.example:50051"):
        with pytest.raises(ConfigError) as info:
            _cfg(tmp_path, listen=listen)
        assert info.value.problems == [
            f"server.listen: {listen} is not a loopback address or a Unix socket; set "
            "server.tls or server.token_file (or server.allow_insecure_remote: true on a "
            "trusted network)"]
    for listen in ("127.0.0.1:0", "127.8.9.10:0", "[::1]:0", "localhost:0", "unix:///x.sock"):
        _cfg(tmp_path, listen=listen)
    _cfg(tmp_path, allow_insecure_remote=True)


async def test_a_listen_override_to_a_remote_address_is_refused_at_start(
    tmp_path: Path, pki: dict[str, Path],
) -> None:
    raw = config_dict(tmp_path)
    car = Sidecar(parse_config(yaml.safe_dump(raw)), listen="0.0.0.0:0", config_path="r.yaml")
    with pytest.raises(ConfigError) as info:
        await car.start()
    assert info.value.problems[0].startswith("server.listen: 0.0.0.0:0 is not a loopback")
    assert car.store is None  # refused before the store was opened
    opted_in = Sidecar(parse_config(yaml.safe_dump(raw)), listen="0.0.0.0:0",
                       allow_insecure_remote=True)  # serve --allow-insecure-remote
    await opted_in.start()
    try:
        assert opted_in.server is not None and not opted_in.server.token_required
    finally:
        await opted_in.stop()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for key, path, problem in [
        ("token_file", str(empty), f"server.token_file: {empty} is empty"),
        ("token_file", str(tmp_path / "none"),
         f"server.token_file: cannot read {tmp_path / 'none'}: No such file or directory"),
    ]:
        with pytest.raises(ConfigError) as bad:
            await Sidecar(_cfg(tmp_path, **{key: path}), config_path="r.yaml").start()
        assert bad.value.problems == [problem]
    with pytest.raises(ConfigError) as bad_pem:
        tls = {"cert_file": str(pki["token"]), "key_file": str(pki["key"])}
        await Sidecar(_cfg(tmp_path, tls=tls), config_path="r.yaml").start()
    assert bad_pem.value.problems == [
        f"server.tls.cert_file: {pki['token']} holds no PEM certificate"]
