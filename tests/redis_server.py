"""A real redis-server for the tests, on a free loopback port, in a temp dir; never port 6379."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """One redis-server process the test owns: start, stop (SIGKILL or clean), restart."""

    dir: Path
    port: int = 0
    appendonly: bool = False
    proc: subprocess.Popen[bytes] | None = None
    password: str | None = None  # --requirepass: clients must AUTH

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it)")
        self.port = self.port or _free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--logfile", str(self.dir / "redis.log")]
        if self.password is not None:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                # With a password the answer is -NOAUTH: the server is up all the same.
                if conn.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                    return self
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING in time")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def redis_server(dir: Path, *, appendonly: bool = False) -> Iterator[RedisServer]:
    """A started server, stopped at the end whatever happens."""
    server = RedisServer(dir, appendonly=appendonly).start()
    try:
        yield server
    finally:
        server.stop(kill=True)
