"""The files under deploy/, read for the deployment tests: Dockerfile, manifests, compose."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dockerfile
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
GRAFANA = DEPLOY / "grafana"
BIN = Path(sys.executable).parent  # the virtualenv's scripts: routing-sidecar, hadolint, ...
# Kubernetes releases the manifests must be valid for: the first with native sidecars on by
# default is 1.29; the oldest bundled schema at or above it, and the newest.
K8S_VERSIONS = ("1.30.0", "1.37.0")


@dataclass(frozen=True)
class Stage:
    """One FROM ... stage of the Dockerfile, as BuildKit's parser reads it."""

    base: tuple[str, ...]
    commands: tuple[dockerfile.Command, ...]

    def all(self, cmd: str) -> list[dockerfile.Command]:
        """Every instruction named `cmd` (upper case)."""
        return [c for c in self.commands if c.cmd == cmd]

    def last(self, cmd: str) -> dockerfile.Command:
        """The instruction that takes effect when `cmd` appears more than once."""
        found = self.all(cmd)
        assert found, f"the stage has no {cmd}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """ENV key value pairs of this stage."""
        out: dict[str, str] = {}
        for c in self.all("ENV"):
            out.update(zip(c.value[::2], c.value[1::2], strict=True))
        return out


def dockerfile_stages() -> list[Stage]:
    """The stages of deploy/Dockerfile, in order."""
    stages: list[Stage] = []
    current: list[dockerfile.Command] = []
    base: tuple[str, ...] = ()
    for c in dockerfile.parse_file(str(DEPLOY / "Dockerfile")):
        if c.cmd == "FROM":
            if base:
                stages.append(Stage(base, tuple(current)))
            base, current = c.value, []
        elif base:
            current.append(c)
    stages.append(Stage(base, tuple(current)))
    return stages


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    """Every document of a (multi-document) YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object under deploy/kubernetes, by (kind, name)."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml_docs(path):
            out[doc["kind"], doc["metadata"]["name"]] = doc
    return out


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """A container (init or main) of a pod spec by name."""
    for c in spec.get("initContainers", []) + spec["containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name!r}")


def arg_value(args: list[str], flag: str) -> str:
    """The value after `flag` in an argument list (the last one wins, as argparse has it)."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
    assert values, f"{flag} not in {args}"
    return values[-1]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The routing-sidecar command of this virtualenv."""
    return subprocess.run([str(BIN / "routing-sidecar"), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def wait_healthy(target: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0,
                 command: tuple[str, ...] = ("health",)) -> subprocess.CompletedProcess[str]:
    """Run a health command against `target` until it exits 0 (or the sidecar dies)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, "the sidecar exited during start-up"
        out = run_cli(*command, "--target", target)
        if out.returncode == 0 or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def wait_admin(address: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Wait until the admin port at `address` answers /health (it opens once gRPC serves)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, "the sidecar exited during start-up"
        try:
            with urllib.request.urlopen(f"http://{address}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the admin port {address} never answered"
        time.sleep(0.05)
