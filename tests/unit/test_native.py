"""The compiled modules: the ones in use are the compiled ones, and a stale one runs as Python."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from routing_sidecar import native


def _write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _record(root: Path, *names: str) -> None:
    """Record the named sources as compiled, as `native.build` does after a build."""
    (root / native.SUMS).write_text("".join(
        f"{n} {native._sum(native.source_of(n, root))}\n" for n in names))


def test_a_compiled_module_is_stale_when_its_source_is_not_the_one_compiled(
        tmp_path: Path) -> None:
    source = native.source_of("core.decide", tmp_path)
    built = native.compiled_of("core.decide", tmp_path)
    assert source == tmp_path / "core" / "decide.py"
    assert built == tmp_path / "core" / f"decide{native.SUFFIX}"
    _write(source, "A = 1\n")
    assert native.stale(("core.decide",), tmp_path) == []  # not compiled: nothing stale
    _write(built)
    assert native.stale(("core.decide",), tmp_path) == ["core.decide"]  # nothing recorded
    _record(tmp_path, "core.decide")
    assert native.stale(("core.decide",), tmp_path) == []
    os.utime(source, ns=(9 * 10**18, 9 * 10**18))  # a later time alone changes nothing
    assert native.stale(("core.decide",), tmp_path) == []
    _write(source, "A = 2\n")  # the same size, other bytes
    assert native.stale(("core.decide",), tmp_path) == ["core.decide"]


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Path]:
    """An importable package `natpkg` under tmp_path; its modules forgotten afterwards."""
    sys.path.insert(0, str(tmp_path))
    finders = list(sys.meta_path)
    try:
        yield tmp_path / "natpkg"
    finally:
        sys.path.remove(str(tmp_path))
        sys.meta_path[:] = finders
        for name in [n for n in sys.modules if n.startswith("natpkg")]:
            del sys.modules[name]


def test_one_stale_compiled_module_has_them_all_imported_from_source(
        package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(package / "__init__.py")
    for name in ("mod", "other"):
        _write(package / f"{name}.py", f"WHERE = '{name} source'\n")
        # Not a loadable extension: importing it instead of the source would fail.
        _write(package / f"{name}{native.SUFFIX}", "not an extension")
    _record(package, "mod", "other")
    _write(package / "mod.py", "WHERE = 'mod edited'\n")
    assert native.keep_stale_out("natpkg", package, ("mod", "other")) == ["mod"]
    edited = importlib.import_module("natpkg.mod")
    assert edited.WHERE == "mod edited"
    assert edited.__file__ == str(package / "mod.py")
    # Up to date itself, but compiled code calls the stale module's compiled code directly.
    assert importlib.import_module("natpkg.other").WHERE == "other source"
    assert "mod changed since compiled" in capsys.readouterr().err


def test_an_up_to_date_extension_is_left_to_the_import_system(package: Path) -> None:
    _write(package / "__init__.py")
    _write(package / "mod.py", "WHERE = 'source'\n")
    _write(package / f"mod{native.SUFFIX}", "not an extension")
    _record(package, "mod")
    finders = len(sys.meta_path)
    assert native.keep_stale_out("natpkg", package, ("mod",)) == []
    assert len(sys.meta_path) == finders
    with pytest.raises(ImportError):  # the extension is what Python tries first
        importlib.import_module("natpkg.mod")


def test_the_compiled_modules_are_the_ones_running() -> None:
    built = [n for n in native.COMPILED if native.compiled_of(n).exists()]
    if not built:
        pytest.skip("not compiled here (`make native` compiles them)")
    assert built == list(native.COMPILED)  # one build compiles them all
    assert native.stale() == [], "sources changed since compiled: `make native`"
    for name in native.COMPILED:
        module = importlib.import_module(f"routing_sidecar.{name}")
        # (Its __file__ is mypyc's guess, right only for a module Python imported itself.)
        assert isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader), name


def test_a_machine_without_a_c_compiler_builds_nothing_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "src" / "routing_sidecar"
    for name in native.COMPILED:
        _write(native.source_of(name, root), "A = 1\n")
    monkeypatch.setenv("CC", "cc-not-installed")  # the compiler setuptools would run
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert native.build(root, tmp_path / "work") == 0
    assert "no C compiler" in capsys.readouterr().err
    assert not any(native.compiled_of(n, root).exists() for n in native.COMPILED)
    assert not (root / native.SUMS).exists()


def test_the_switch_has_up_to_date_compiled_modules_run_as_python(package: Path) -> None:
    _write(package / "__init__.py")
    _write(package / "mod.py", "WHERE = 'source'\n")
    _write(package / f"mod{native.SUFFIX}", "not an extension")
    _record(package, "mod")
    assert native.keep_stale_out("natpkg", package, ("mod",), {native.SWITCH: "0"}) == []
    module = importlib.import_module("natpkg.mod")
    assert module.WHERE == "source"
    assert isinstance(module.__loader__, importlib.machinery.SourceFileLoader)


def test_the_sidecar_in_use_is_the_compiled_one_unless_switched_off() -> None:
    """The switch, end to end: a Python started with it imports the modules from source."""
    if not all(native.compiled_of(n).exists() for n in native.COMPILED):
        pytest.skip("not compiled here (`make native` compiles them)")
    probe = ("import importlib.machinery as m, routing_sidecar.core.decide as d, "
             "routing_sidecar.native as n; "
             "print(n.in_use(), isinstance(d.__loader__, m.ExtensionFileLoader))")
    for env, expected in (({}, "True True"), ({native.SWITCH: "off"}, "False False")):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=60, check=True)
        assert out.stdout.split() == expected.split(), (env, out.stderr)
