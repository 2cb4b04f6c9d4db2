"""`routing-sidecar serve --workers N`: N sidecar processes on one port, for one busy pod.

Each worker is a whole sidecar (its own event loop and core) bound to the same address with
SO_REUSEPORT, so the kernel spreads connections over them; they share every piece of state
through the fleet back ends (budgets, breakers and learning in Redis, the audit trail in
PostgreSQL), which is why more than one worker needs both. The parent only supervises: it
forwards SIGTERM, SIGINT and SIGHUP, and if a worker dies it stops the others and exits
non-zero, so the pod's supervisor restarts the whole set.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from routing_sidecar.errors import ConfigError

if TYPE_CHECKING:  # the CLI imports this module; pydantic only when a sidecar starts
    from routing_sidecar.config import RouterConfig

WORKER_FLAG = "--worker-index"
PR_SET_PDEATHSIG = 1


def check_workers(cfg: RouterConfig, workers: int, listen: str) -> None:
    """Refuse a worker count the config cannot share state for (one line, path named)."""
    if workers <= 1:
        return
    problems = []
    if not cfg.fleet.enabled:
        problems.append("fleet.redis_url: --workers needs the fleet's Redis to share budgets")
    if cfg.store.url is None:
        problems.append("store.url: --workers needs one PostgreSQL audit trail for all workers")
    if listen.startswith("unix:") or listen.rpartition(":")[2] == "0":
        problems.append("server.listen: --workers needs a fixed TCP port to share")
    if problems:
        raise ConfigError("--workers", problems)


def worker_admin(listen: str, index: int) -> str:
    """Worker i serves its own /metrics on the admin port + i (port 0 stays any free one)."""
    if not listen:
        return listen
    host, _, port = listen.rpartition(":")
    return listen if port == "0" else f"{host}:{int(port) + index}"


def worker_outbox(path: str, index: int) -> str:
    """Each worker keeps its own outbox file (one writer per file)."""
    if index == 0:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{index}{p.suffix}"))


def _die_with_parent() -> Callable[[], None] | None:
    """What a worker runs before exec: a SIGTERM when the supervisor dies, even by SIGKILL.

    None where there is no prctl (not Linux): the supervisor's own signal forwarding has to do.
    The C library is found here, in the supervisor, not in each forked child.
    """
    # Imported here: only the supervisor needs ctypes, which (with ctypes.util's tempfile,
    # random and shutil) every start and CLI command would otherwise load.
    import ctypes  # noqa: PLC0415
    import ctypes.util  # noqa: PLC0415

    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return die_with_parent


def supervise(argv: Sequence[str], workers: int, grace_s: float) -> int:
    """Start `workers` children running `argv` plus their index; wait; 0 when all end well."""
    before_exec = _die_with_parent()
    # Our own command line, built by the CLI from its own arguments.
    children = [subprocess.Popen([*argv, WORKER_FLAG, str(i)],  # noqa: S603
                                 preexec_fn=before_exec)  # noqa: PLW1509
                for i in range(workers)]
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        codes = [c.poll() for c in children]
        if all(code is not None for code in codes):
            return 0 if all(code == 0 for code in codes) else 1
        if not stopping and any(code is not None for code in codes):
            forward(signal.SIGTERM, None)  # one died: take the set down together
            _reap(children, grace_s)
            return 1
        time.sleep(0.05)


def _reap(children: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s + 5.0
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
