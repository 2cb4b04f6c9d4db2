"""A real redis-server for tests: started on a free loopback port in a temp dir, then stopped.

Reusable by any test that needs Redis (cache, ledger, health):

    from tests.redis_server import redis_server  # noqa: F401  (the fixture)

    async def test_x(redis_server: RedisServer) -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url)

or, for a server of your own (durable, restarted, killed mid-write):

    server = RedisServer.start(tmp_path, appendonly=True)
    ...
    server.kill()           # SIGKILL, like a crash
    server = server.restart()   # same port and data directory

Nothing is saved unless asked (`--save ''`, `--appendonly no`), the server listens on
127.0.0.1 only, and it never touches the machine's own Redis on 6379. Tests are skipped when no
redis-server binary is installed.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

READY_TIMEOUT_S = 10.0


def redis_binary() -> str | None:
    """The redis-server on PATH, or None."""
    return shutil.which("redis-server")


def ping(port: int, timeout_s: float = 0.5) -> bool:
    """True when a Redis server on 127.0.0.1:port answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server process and where to reach it."""

    port: int
    directory: Path
    appendonly: bool
    proc: subprocess.Popen[bytes]
    password: str | None = None

    @property
    def url(self) -> str:
        """redis://127.0.0.1:PORT/0"""
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, directory: Path, *, appendonly: bool = False, port: int | None = None,
              password: str | None = None) -> RedisServer:
        """Start a server with its files in `directory`; return once it answers PING."""
        binary = redis_binary()
        if binary is None:
            pytest.skip("redis-server is not installed")
        directory.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if appendonly else "no", "--dir", str(directory),
                "--daemonize", "no", "--loglevel", "warning",
                "--logfile", str(directory / "redis.log")]
        if appendonly:
            args += ["--appendfsync", "always"]
        if password is not None:
            args += ["--requirepass", password]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = cls(port, directory, appendonly, proc, password)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (ping(port) or (password is not None and server._answers())):
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                log = directory / "redis.log"
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise AssertionError(f"redis-server on port {port} did not start\n{text}")
            time.sleep(0.02)
        return server

    def _answers(self) -> bool:
        # With requirepass, PING answers -NOAUTH: any reply means the server is up.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return bool(s.recv(64))
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)

    def restart(self) -> RedisServer:
        """A new server on the same port and directory (with appendonly, the same data)."""
        self.stop()
        return RedisServer.start(self.directory, appendonly=self.appendonly, port=self.port,
                                 password=self.password)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty, non-persistent redis-server for one test."""
    server = RedisServer.start(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
