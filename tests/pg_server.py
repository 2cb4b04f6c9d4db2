"""A real PostgreSQL server for the tests: initdb into a temp dir, a free port, fast shutdown.

The server binaries come from the newest /usr/lib/postgresql/*/bin (or $ROUTING_PG_BINDIR).
Missing binaries fail loudly: the fleet tests must never pass by skipping. initdb refuses to
run as root, so under root (CI) both initdb and the server run as the `postgres` OS user and
the temp dir is handed to it. Host connections need a password (scram-sha-256), so every DSN
the tests use carries one, and the redaction tests have a secret to look for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

BIN_GLOB = "/usr/lib/postgresql/*/bin"
OS_USER = "postgres"
SUPERUSER = "routing"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_DB_NUMBERS = itertools.count(1)


class PgServerError(RuntimeError):
    """The test PostgreSQL server could not be found, initialised or started."""


def find_bindir() -> Path:
    """The directory holding initdb and postgres: $ROUTING_PG_BINDIR, else the newest install."""
    override = os.environ.get("ROUTING_PG_BINDIR")
    candidates = [Path(override)] if override else sorted(
        Path("/").glob(BIN_GLOB.lstrip("/")), key=_version_key, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise PgServerError(
        f"no PostgreSQL server binaries (initdb, postgres) under {override or BIN_GLOB}; "
        "install the postgresql package (.ci/run does) or set ROUTING_PG_BINDIR")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)


@dataclass
class PgServer:
    """One running server; `dsn(db)` reaches database `db` over TCP with the password."""

    bindir: Path
    root: Path
    port: int
    password: str
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def dsn(self, database: str = "postgres") -> str:
        return (f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@127.0.0.1:"
                f"{self.port}/{database}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def create_database(self) -> str:
        """A new, empty database (from template0); its DSN."""
        name = f"t{next(_DB_NUMBERS)}_{os.getpid()}"
        self.query(self.dsn(), f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn(name)

    def query(self, dsn: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Run one statement on its own connection, from sync or async code alike."""
        async def run() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                return [tuple(r) for r in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        rows: list[tuple[Any, ...]] = _in_thread(run())
        return rows

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it hangs, then remove every file."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _as_owner() -> dict[str, object]:
    """Popen arguments that drop root to the postgres OS user; nothing when not root."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(OS_USER)
    except KeyError:
        raise PgServerError(f"running as root, but there is no {OS_USER!r} OS user to run "
                            "PostgreSQL as") from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(OS_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _initdb(bindir: Path, root: Path, password: str) -> Path:
    data = root / "data"
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    _chown(pwfile)
    done = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--pwfile", str(pwfile),
         "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
         "--no-sync"],  # the template files; the server itself keeps fsync on
        capture_output=True, text=True, timeout=120, check=False, **_as_owner())  # type: ignore[call-overload]
    pwfile.unlink()
    if done.returncode != 0:
        raise PgServerError(f"initdb failed ({done.returncode}): {done.stderr[-2000:]}")
    return data


def _in_thread(coro: Any) -> Any:
    # A thread of its own: asyncio.run cannot nest inside a test's running loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=60)


def _ready(dsn: str) -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError):
            return False  # not listening yet, or "the database system is starting up"
        await conn.close()
        return True

    return bool(_in_thread(probe()))


def _launch(bindir: Path, root: Path, data: Path, password: str) -> PgServer:
    from tests.conftest import free_port  # conftest imports this module's fixtures

    port = free_port()
    with (root / "server.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root / "sock"),
             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, **_as_owner())  # type: ignore[call-overload]
    server = PgServer(bindir, root, port, password, proc)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PgServerError(f"postgres exited with {proc.returncode}:\n{server.logs()}")
        if _ready(server.dsn()):
            return server
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise PgServerError(f"postgres did not accept connections in {START_TIMEOUT_S:g}s:\n"
                        f"{server.logs()}")


def start_pg(attempts: int = 3) -> PgServer:
    """initdb into a fresh temp dir and start a server on a free loopback port."""
    bindir = find_bindir()
    # Not under pytest's tmp_path: its 0700 parents would keep the postgres user out.
    root = Path(tempfile.mkdtemp(prefix="routing-pg-"))
    try:
        _chown(root)
        (root / "sock").mkdir()
        _chown(root / "sock")
        password = "pw-" + secrets.token_urlsafe(12)
        data = _initdb(bindir, root, password)
        for attempt in range(attempts):
            try:
                return _launch(bindir, root, data, password)
            except PgServerError:
                # The free port may have been taken between the probe and the bind.
                if attempt == attempts - 1:
                    raise
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer]:
    """A started server, stopped and removed on exit."""
    server = start_pg()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session; it fails (never skips) without binaries."""
    with pg_server() as server:
        yield server


@pytest.fixture
def pg_dsn(pg: PgServer) -> str:
    """A fresh, empty database on the session's server, for one test."""
    return pg.create_database()
