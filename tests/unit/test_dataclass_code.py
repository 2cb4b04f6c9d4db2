"""The recorded code of dataclasses' generated methods: the same classes, and only when it fits."""

from __future__ import annotations

import dataclasses
import marshal
import subprocess
import sys
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from typing import Any

import pytest

from routing_sidecar import dataclass_code
from routing_sidecar.dataclass_code import HEADER, CodeCache, install, load, save, using


def define() -> Any:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Point:
        """A frozen, slotted dataclass with a default and a factory."""

        x: int
        label: str = "a"
        tags: tuple[str, ...] = dataclasses.field(default_factory=tuple)

    return Point


def test_recorded_code_defines_the_same_dataclass_without_compiling(tmp_path: Path) -> None:
    with using(CodeCache({}, record=True)) as recorder:
        define()
    assert recorder.misses >= 5 and len(recorder.codes) == recorder.misses
    save(recorder.codes, tmp_path / "code.bin")
    codes = load(tmp_path / "code.bin")
    assert codes.keys() == recorder.codes.keys()

    with using(CodeCache(codes)) as cache:
        point = define()
    assert (cache.hits, cache.misses) == (len(codes), 0)
    assert "exec" not in vars(dataclasses)  # given back after the block
    p = point(1)
    assert p == point(1, "a", ()) and p != point(2) and hash(p) == hash(point(1))
    assert repr(p).endswith("Point(x=1, label='a', tags=())")
    assert dataclasses.replace(p, x=3).x == 3 and not hasattr(p, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 2


def test_a_text_not_recorded_is_compiled_as_before() -> None:
    with using(CodeCache({})) as cache:
        point = define()
    assert cache.hits == 0 and cache.misses >= 5 and not cache.codes
    assert point(1) == point(1)


@pytest.mark.parametrize("content", [
    b"",
    b"not a cache",
    b"routing-sidecar dataclass code\n" + bytes([MAGIC_NUMBER[0] ^ 1]) + MAGIC_NUMBER[1:]
    + marshal.dumps({"x": compile("1", "<string>", "exec")}),  # another Python's
    HEADER + b"\xff\x00 truncated",
    HEADER + marshal.dumps(["a list"]),
])
def test_a_missing_foreign_or_broken_file_changes_nothing(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "code.bin"
    path.write_bytes(content)
    assert install(path) is None
    assert install(tmp_path / "missing.bin") is None
    assert "exec" not in vars(dataclasses)


def test_the_recorded_file_covers_what_the_command_defines(tmp_path: Path) -> None:
    # Real processes: record as `make bytecode` does, then import the start's modules as
    # `routing-sidecar serve` does, with that file installed first.
    out = tmp_path / "code.bin"
    done = subprocess.run([sys.executable, "-m", "routing_sidecar.dataclass_code",
                           "--output", str(out)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{out}: ") and out.stat().st_size > 0
    probe = ("import sys, pathlib; from routing_sidecar import dataclass_code as d; "
             f"c = d.install(pathlib.Path({str(out)!r})); "
             f"[__import__(m) for m in {dataclass_code.MODULES!r}]; print(c.hits, c.misses)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    hits, misses = map(int, done.stdout.split())
    assert hits > 500 and misses == 0
