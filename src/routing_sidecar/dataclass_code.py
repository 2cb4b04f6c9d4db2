"""Compiled code of the methods `dataclasses` generates, kept beside the bytecode.

A frozen dataclass gets its __init__, __repr__, __eq__, __hash__, __setattr__ and __delattr__
as source text, which `dataclasses` compiles with exec() each time the class is defined: for
the ~170 dataclasses a start defines (the sidecar's and its libraries'), those compiles are
about a quarter of the work before SERVING. The compiled code depends on that text alone, so
`python -m routing_sidecar.dataclass_code` (`make bytecode`, the image build) records it once
into `__pycache__`, as compileall does for modules, and `install()` (the command's first step,
`__main__.py`) gives `dataclasses` an exec that runs the recorded code of a text it has and
compiles any other text as before. A missing, stale or foreign file changes nothing but speed.
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import importlib
import marshal
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from types import CodeType
from typing import Any

CACHE = (Path(__file__).parent / "__pycache__"
         / f"dataclass-code.{sys.implementation.cache_tag}.bin")
# What the command defines before it serves, and the admin port on its thread after.
MODULES = ("routing_sidecar.cli", "routing_sidecar.config", "routing_sidecar.app",
           "routing_sidecar.http_api.server", "routing_sidecar.grpc_api.jsonwire")
# Written first: code from another Python version (another marshal format) is never loaded.
HEADER = b"routing-sidecar dataclass code\n" + MAGIC_NUMBER


def _compile(source: str) -> CodeType:
    # As exec() compiles a string called from dataclasses.py, which has no __future__ imports.
    return compile(source, "<string>", "exec", dont_inherit=True)


class CodeCache:
    """The exec `dataclasses` calls: recorded code for a known text, else a compile."""

    def __init__(self, codes: Mapping[str, CodeType], *, record: bool = False) -> None:
        self.codes = dict(codes)
        self.record = record  # keep the code of texts met for the first time
        self.hits = 0
        self.misses = 0

    def __call__(self, source: Any, globals: dict[str, Any] | None = None,
                 locals: Mapping[str, Any] | None = None, /) -> None:
        """Run `source` as exec() would; a text seen before runs its code compiled then."""
        if globals is None:  # exec()'s own default: the caller's namespaces
            frame = sys._getframe(1)
            globals = frame.f_globals
            locals = frame.f_locals if locals is None else locals
        if isinstance(source, str):
            code = self.codes.get(source)
            if code is None:
                self.misses += 1
                code = _compile(source)
                if self.record:
                    self.codes[source] = code
            else:
                self.hits += 1
            source = code
        builtins.exec(source, globals, locals)  # noqa: S102 - the text dataclasses generated


@contextmanager
def using(cache: CodeCache) -> Iterator[CodeCache]:
    """`cache` in use for the `with` block only."""
    use(cache)
    try:
        yield cache
    finally:
        vars(dataclasses).pop("exec", None)


def use(cache: CodeCache) -> None:
    """From now on `dataclasses` runs its generated methods through `cache`."""
    # A module global named exec shadows the builtin inside dataclasses.py, which calls exec
    # only on the source of the methods it generates.
    vars(dataclasses)["exec"] = cache


def load(path: Path = CACHE) -> dict[str, CodeType]:
    """The recorded code in `path`; empty when it is missing, unreadable or not this Python's."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if not data.startswith(HEADER):
        return {}
    try:
        # As trusted as the bytecode beside it: both are written when the package is installed.
        codes = marshal.loads(data[len(HEADER):])  # noqa: S302
    except (EOFError, ValueError, TypeError):
        return {}
    if not isinstance(codes, dict):
        return {}
    return {k: v for k, v in codes.items() if isinstance(k, str) and isinstance(v, CodeType)}


def install(path: Path = CACHE) -> CodeCache | None:
    """Use the code recorded in `path`, if there is any; None (nothing changed) otherwise."""
    codes = load(path)
    if not codes:
        return None
    cache = CodeCache(codes)
    use(cache)
    return cache


def record(modules: Iterable[str] = MODULES) -> dict[str, CodeType]:
    """Import `modules` (not imported yet) and return the code of every method generated."""
    with using(CodeCache({}, record=True)) as cache:
        for name in modules:
            importlib.import_module(name)
    return cache.codes


def save(codes: Mapping[str, CodeType], path: Path = CACHE) -> None:
    """Write `codes` to `path` whole (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    part.write_bytes(HEADER + marshal.dumps(dict(codes)))
    part.replace(path)


def main(argv: list[str] | None = None) -> int:
    """Record the dataclass code the sidecar's start generates into its cache file."""
    p = argparse.ArgumentParser(prog="python -m routing_sidecar.dataclass_code",
                                description=main.__doc__)
    p.add_argument("--output", type=Path, default=CACHE)
    args = p.parse_args(argv)
    codes = record()
    save(codes, args.output)
    print(f"{args.output}: {len(codes)} methods")
    return 0


if __name__ == "__main__":
    sys.exit(main())
