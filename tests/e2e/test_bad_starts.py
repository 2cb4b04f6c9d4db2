"""Every refused start of `routing-sidecar serve`: exit non-zero, one stderr line, no traceback.

All the refused starts run at once (one module fixture), each in a directory of its own; the
tests then read what each process printed and how it exited.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from routing_sidecar.ports import SystemClock
from routing_sidecar.storage import SqliteStore
from tests.conftest import config_dict, free_port, write_config

BIN = Path(sys.executable).parent / "routing-sidecar"
EXIT_TIMEOUT_S = 60.0  # a hang (the process outliving its refused start) fails the test
PARALLEL = 4  # refused starts run side by side, this many at a time


@dataclass
class Case:
    """One refused start: how to set it up and the stderr line it must end with."""

    name: str
    setup: Callable[[Path, int], list[str]]  # (directory, a held port) -> serve arguments
    line: str  # a regex the last stderr line must match whole; {dir} and {port} filled in
    code: int = 1


def _serve(d: Path, **changes: object) -> list[str]:
    raw = config_dict(d)
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        raw[section][key] = value
    return ["--config", str(write_config(d, raw))]


def _store_file(d: Path, content: bytes) -> list[str]:
    (d / "routing.db").write_bytes(content)
    return _serve(d)


def _truncated_store(d: Path, _port: int) -> list[str]:
    async def make() -> None:
        store = await SqliteStore.open(str(d / "routing.db"), retention_days=1,
                                       clock=SystemClock())
        await store.close()

    asyncio.run(make())
    db = d / "routing.db"
    db.write_bytes(db.read_bytes()[: 3 * 4096])  # the schema pages cut off mid-file
    return _serve(d)


def _parent_is_file(d: Path, _port: int) -> list[str]:
    (d / "plain").write_text("not a directory\n")
    return _serve(d, store__path=str(d / "plain" / "routing.db"))


def _config_raw(d: Path, content: bytes) -> list[str]:
    (d / "router.yaml").write_bytes(content)
    return ["--config", str(d / "router.yaml")]


REMOTE_OK = {"server__allow_insecure_remote": True}  # to reach the bind of a remote address

CASES = [
    Case("grpc_port_taken", lambda d, p: [*_serve(d), "--listen", f"127.0.0.1:{p}"],
         r"error: cannot listen on 127\.0\.0\.1:{port}: address already in use"),
    Case("listen_unassignable",
         lambda d, p: [*_serve(d, **REMOTE_OK), "--listen", "10.255.255.1:0"],
         r"error: cannot listen on 10\.255\.255\.1:0: cannot assign requested address"),
    Case("listen_bad_host", lambda d, p: [*_serve(d, **REMOTE_OK),
                                          "--listen", "no-such-host.invalid:0"],
         r"error: cannot listen on no-such-host\.invalid:0: cannot resolve host "
         r"'no-such-host\.invalid'"),
    Case("listen_unix_no_directory",
         lambda d, p: [*_serve(d), "--listen", f"unix://{d}/missing/s.sock"],
         r"error: cannot listen on unix://{dir}/missing/s\.sock: directory {dir}/missing does "
         r"not exist"),
    Case("listen_remote_without_auth", lambda d, p: [*_serve(d), "--listen", "0.0.0.0:0"],
         r"error: {dir}/router\.yaml: invalid configuration: server\.listen: 0\.0\.0\.0:0 is "
         r"not a loopback address or a Unix socket; set server\.tls or server\.token_file .*",
         code=2),
    Case("admin_port_taken", lambda d, p: [*_serve(d), "--admin-listen", f"127.0.0.1:{p}"],
         r"error: admin\.listen: cannot bind 127\.0\.0\.1:{port}: address already in use"),
    Case("store_corrupt", lambda d, p: _store_file(d, os.urandom(8192)),
         r"error: {dir}/routing\.db: cannot open the store: file is not a database"),
    Case("store_truncated", _truncated_store,
         r"error: {dir}/routing\.db: cannot (open|prepare) the store: database disk image is "
         r"malformed"),
    Case("store_is_directory", lambda d, p: _serve(d, store__path=str(d)),
         r"error: {dir}/router\.yaml: invalid configuration: store\.path: {dir} is a "
         r"directory.*", code=2),
    Case("store_parent_is_file", _parent_is_file,
         r"error: {dir}/router\.yaml: invalid configuration: store\.path: cannot create "
         r"directory {dir}/plain: .*", code=2),
    Case("config_missing", lambda d, p: ["--config", str(d / "nowhere.yaml")],
         r"error: {dir}/nowhere\.yaml: invalid configuration: cannot read file: No such file "
         r"or directory", code=2),
    Case("config_is_directory", lambda d, p: ["--config", str(d)],
         r"error: {dir}: invalid configuration: cannot read file: Is a directory", code=2),
    Case("config_not_utf8", lambda d, p: _config_raw(d, b"server:\n  listen: \xff\xfe\n"),
         r"error: {dir}/router\.yaml: invalid configuration: not UTF-8 text \(byte 0xff at "
         r"offset 18\)", code=2),
    Case("config_out_of_range", lambda d, p: _serve(d, ledger__reservation_ttl_s=0.000001),
         r"error: {dir}/router\.yaml: invalid configuration: ledger\.reservation_ttl_s: .*",
         code=2),
]


@dataclass
class Result:
    """How one refused start ended."""

    code: int | None
    stderr: str
    directory: Path
    port: int


@pytest.fixture(scope="module")
def held_port() -> Iterator[int]:
    """A loopback port with a listener on it for the whole module."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, held_port: int) -> dict[str, Result]:
    """Run every case, a few at a time (each is mostly interpreter start-up), to its exit."""
    # Made here, before the threads: the factory's first call creates its base directory and
    # is not safe to race.
    dirs = {case.name: tmp_path_factory.mktemp(case.name) for case in CASES}

    def run(case: Case) -> tuple[str, Result]:
        d = dirs[case.name]
        argv = [str(BIN), "serve", *case.setup(d, held_port)]
        try:
            out = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:  # run() has killed it
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return case.name, Result(None, err, d, held_port)
        return case.name, Result(out.returncode, out.stderr, d, held_port)

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return dict(pool.map(run, CASES))


def _not_log_records(stderr: str) -> list[str]:
    """The stderr lines that are not the sidecar's JSON log records at info level."""
    lines = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            lines.append(line)
            continue
        if not isinstance(record, dict) or record.get("level") != "info":
            lines.append(line)
    return lines


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_start_exits_with_one_line(case: Case, results: dict[str, Result]) -> None:
    r = results[case.name]
    assert r.code is not None, f"still running after {EXIT_TIMEOUT_S}s:\n{r.stderr}"
    assert "Traceback" not in r.stderr
    others = _not_log_records(r.stderr)
    assert len(others) == 1, r.stderr  # no warning, error record or grpc line beside it
    pattern = case.line.format(dir=re.escape(str(r.directory)), port=r.port)
    assert re.fullmatch(pattern, others[0]), others[0]
    assert r.stderr.splitlines()[-1] == others[0]
    assert r.code == case.code


def test_debug_flag_shows_the_traceback(tmp_path: Path, held_port: int) -> None:
    argv = [str(BIN), "serve", *_serve(tmp_path), "--listen", f"127.0.0.1:{held_port}",
            "--debug"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)
    assert out.returncode == 1
    assert "Traceback (most recent call last)" in out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{held_port}: address already in use")


def test_refused_grpc_bind_leaves_no_admin_port(tmp_path: Path, held_port: int) -> None:
    admin = free_port()
    argv = [str(BIN), "serve", *_serve(tmp_path), "--listen", f"127.0.0.1:{held_port}",
            "--admin-listen", f"127.0.0.1:{admin}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)
    assert out.returncode == 1
    assert "admin port serving" not in out.stderr
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", admin))


def test_admin_port_answers_only_once_grpc_serves(tmp_path: Path) -> None:
    grpc_port, admin = free_port(), free_port()
    argv = [str(BIN), "serve", *_serve(tmp_path), "--listen", f"127.0.0.1:{grpc_port}",
            "--admin-listen", f"127.0.0.1:{admin}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while True:  # the first moment /health answers, gRPC must already say SERVING
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/health", timeout=1) as r:
                    assert r.status == 200  # an answer before gRPC serves would be 503
                    break
            except urllib.error.HTTPError as exc:
                raise AssertionError(f"/health answered {exc.code} before gRPC served") from exc
            except OSError:
                time.sleep(0.005)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.kill()
        proc.wait()


def test_read_only_store_is_refused(tmp_path: Path) -> None:
    # File modes do not stop root; the immutable attribute does (where the file system has it).
    db = tmp_path / "routing.db"

    async def make() -> None:
        store = await SqliteStore.open(str(db), retention_days=1, clock=SystemClock())
        await store.close()

    asyncio.run(make())
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        out = subprocess.run([str(BIN), "serve", *_serve(tmp_path)], capture_output=True,
                             text=True, timeout=EXIT_TIMEOUT_S)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert _not_log_records(out.stderr) == [
        f"error: store {db}: write failed: attempt to write a readonly database"]


def test_a_second_sidecar_on_the_same_store_is_refused(tmp_path: Path) -> None:
    # Each sidecar holds its budget totals in memory: two on one file would each spend it all.
    config = _serve(tmp_path)
    first_port = free_port()
    first = subprocess.Popen([str(BIN), "serve", *config, "--listen", f"127.0.0.1:{first_port}",
                              "--admin-listen", ""],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        with grpc.insecure_channel(f"127.0.0.1:{first_port}") as ch:
            while True:
                assert first.poll() is None and time.monotonic() < deadline
                try:
                    reply = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    time.sleep(0.05)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        out = subprocess.run([str(BIN), "serve", *config, "--listen", f"127.0.0.1:{free_port()}",
                              "--admin-listen", ""],
                             capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        [line] = _not_log_records(out.stderr)
        assert line == (f"error: {tmp_path / 'routing.db'}: in use by another sidecar "
                        "(one sidecar per SQLite file; several share a PostgreSQL store, "
                        "store.url)")
        assert first.poll() is None  # the first one serves on
    finally:
        first.kill()
        first.wait()
