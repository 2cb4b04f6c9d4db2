"""The modules compiled to C by mypyc (`make native`), and the check that keeps a stale one out.

Every Route runs the same few modules: the core's decision, its budget and health books, the
domain types, the request's conversion and the audit row. Compiled by mypyc (part of the
pinned mypy) from the same typed source, the core's decide() runs in 29 µs instead of 71 (p50,
the RPC mix) and a Route takes 15% fewer instructions (callgrind; see docs/benchmarks.md);
the source stays the one truth, and where no compiler is at hand the modules run as Python,
unchanged.

`build()` (`make native`, run by `make run`, `make test` and the image build) compiles them in
place, beside their source, when one is missing or its source changed since (it records the
size and CRC of each source it compiled in `native.sums`). A compiled module whose source
changed since (an edit, a checkout) would run the old code, so `keep_stale_out` (the
package's first step) then has Python import every compiled module from its source instead,
and says so once on stderr.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).parent  # the package directory
# Dotted names under routing_sidecar. Not here: modules whose objects are patched at runtime
# (a compiled class's methods are read-only) and those that mostly await or call libraries.
COMPILED = (
    "core.budget", "core.budget_rules", "core.cache_key", "core.candidates", "core.catalog",
    "core.decide", "core.health", "core.health_types", "core.learning", "core.outcome_checks",
    "core.reasons", "core.retry", "core.rules", "core.scoring", "core.view",
    "domain", "grpc_api.convert", "records", "service.budgets", "service.ev", "service.learning",
    "service.limits", "service.view", "storage.rows",
)
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so
SUMS = "native.sums"  # beside this file: `name size:crc32` of each source as compiled
SWITCH = "ROUTING_SIDECAR_NATIVE"  # 0 (or off): the compiled modules run as Python


def source_of(name: str, root: Path = ROOT) -> Path:
    """The .py file of a compiled module's dotted name."""
    return root.joinpath(*name.split(".")).with_suffix(".py")


def compiled_of(name: str, root: Path = ROOT) -> Path:
    """Where the compiled extension of a module's dotted name lies."""
    source = source_of(name, root)
    return source.with_name(source.stem + SUFFIX)


def _sum(path: Path) -> str:
    data = path.read_bytes()
    return f"{len(data)}:{zlib.crc32(data):08x}"


def _recorded(root: Path) -> dict[str, str]:
    """What `build` recorded of each source it compiled (empty when it recorded nothing)."""
    try:
        lines = (root / SUMS).read_text().splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split(" ", 1) for line in lines if " " in line)


def stale(names: Sequence[str] = COMPILED, root: Path = ROOT) -> list[str]:
    """The names whose compiled extension exists but was not compiled from the source there.

    Known by the size and CRC of each source as compiled, not by file times: an install (a
    wheel unpacked, a checkout) gives its files whatever times it likes.
    """
    recorded: dict[str, str] | None = None
    out = []
    for name in names:
        if not compiled_of(name, root).exists():
            continue
        recorded = _recorded(root) if recorded is None else recorded
        if recorded.get(name) != _sum(source_of(name, root)):
            out.append(name)
    return out


class _SourceFirst:
    """A meta path finder that imports the named modules from their .py files."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self._sources = sources

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        """The source's spec for a stale compiled module; None (look on) for any other."""
        source = self._sources.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def in_use(package: str = __package__ or "routing_sidecar") -> bool:
    """Whether the modules of COMPILED this process has imported run compiled (all of them)."""
    loaded = [sys.modules[m] for n in COMPILED if (m := f"{package}.{n}") in sys.modules]
    return bool(loaded) and all(
        isinstance(getattr(mod, "__loader__", None), importlib.machinery.ExtensionFileLoader)
        for mod in loaded)


def keep_stale_out(package: str, root: Path = ROOT, modules: Sequence[str] = COMPILED,
                   environ: Mapping[str, str] = os.environ) -> list[str]:
    """When a compiled module is stale, import them all from source; return the stale ones.

    All of them, not only the stale ones: compiled modules call one another's compiled code
    directly, so the others would still run the old code of a stale one. `SWITCH=0` in the
    environment has them all run from source too (a profiler sees into them then, and a
    suspected fault in the compiled code can be ruled out without a rebuild).
    """
    changed = stale(modules, root)
    off = environ.get(SWITCH, "").strip().lower() in ("0", "off", "false", "no")
    if changed or off:
        sys.meta_path.insert(0, _SourceFirst({f"{package}.{n}": source_of(n, root)
                                              for n in modules}))
    if changed:
        print(f"routing-sidecar: {', '.join(changed)} changed since compiled; the compiled "
              "modules run as Python (`make native` compiles them again)", file=sys.stderr)
    return changed


# mypyc's build, as its own command line writes it, with the shared part of the compiled code
# (one library for the group) inside the package instead of beside it at the top level.
_SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
setup(name="routing-sidecar-native", script_args=sys.argv[1:], ext_modules=mypycify(
    {args!r}, opt_level="3", target_dir={target!r}, group_name="routing_sidecar.compiled"))
"""
# mypy checks the modules it compiles; `make lint` checks the rest, which need not be checkable
# where the build runs (the image has no type stubs).
_MYPY_ARGS = ("--follow-imports=silent",)


def build(root: Path = ROOT, work: Path | None = None) -> int:
    """Compile the modules when one is missing or stale (see `stale`); 0 when done."""
    due = [n for n in COMPILED if not compiled_of(n, root).exists()] + stale(COMPILED, root)
    if not due:
        return 0
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:  # a machine without one runs the modules as Python
        print(f"no C compiler ({compiler}): the compiled modules run as Python",
              file=sys.stderr)
        return 0
    src = root.parent
    work = work or src.parent / "build" / "native"
    files = [str(source_of(n, root).relative_to(src)) for n in COMPILED]
    sums = {n: _sum(source_of(n, root)) for n in COMPILED}  # the sources as compiled
    setup = _SETUP.format(args=[*_MYPY_ARGS, f"--cache-dir={work / 'mypy-cache'}", *files],
                          target=str(work))
    # A checkout's generated stubs (routing_sidecar_api) are where an editable install's
    # import hook finds them, which mypy does not ask: it is told.
    generated = src.parent / "generated"
    env = {**os.environ, "MYPYPATH": str(generated)} if generated.is_dir() else None
    done = subprocess.run(  # noqa: S603  # this interpreter, on the package's own files
        [sys.executable, "-c", setup, "build_ext", "--inplace", "--build-temp", str(work),
         "--build-lib", str(work / "lib")],
        cwd=src, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        check=False)
    if done.returncode != 0:
        lines = done.stdout.splitlines()
        first = next((line for line in lines if "error" in line.lower()), None)
        print(f"mypyc: {first or (lines[-1] if lines else 'failed')}", file=sys.stderr)
        return done.returncode
    (root / SUMS).write_text("".join(f"{n} {sums[n]}\n" for n in COMPILED))
    return 0


