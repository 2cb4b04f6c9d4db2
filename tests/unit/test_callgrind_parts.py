"""The instructions bench's split of a callgrind dump by library."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.latency.callgrind_parts import OTHER, PARTS, part_of, parts

# A dump as callgrind writes it: names compressed to numbers after first use (a name may be
# first given by a call's `cob=`), relative positions, and a call's inclusive cost on the
# line after `calls=`, which is already in the callee's own lines.
DUMP = """\
# callgrind format
version: 1
positions: line
events: Ir
summary: 0

ob=(1) /usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6
fl=(1) ???
fn=(1) sqlite3VdbeExec
10 100
+2 50
cob=(2) /usr/lib/libpython3.11.so.1.0
cfi=(2) ???
cfn=(2) PyObject_Call
calls=1 0
* 7000
* 5

ob=(2)
fl=(2)
fn=(2)
0 7000
ob=/venv/site-packages/google/_upb/_message.abi3.so
fn=(3) PyUpb_Message_SetField
5 30
ob=(3) /opt/other/libfoo.so
fn=(4) foo
1 2
totals: 7187
"""


def test_a_dump_is_split_by_the_object_that_ran_each_line() -> None:
    split = parts(DUMP.splitlines())
    assert split["SQLite"] == 155  # own lines only: the call's 7000 is the callee's
    assert split["Python interpreter"] == 7000
    assert split["protobuf (upb)"] == 30
    assert split[OTHER] == 2
    assert sum(split.values()) == 7187
    assert list(split) == [*(p for p, _ in PARTS), OTHER]


@pytest.mark.parametrize(("path", "part"), [
    ("/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0", "Python interpreter"),
    ("/usr/lib/python3.11/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so",
     "Python interpreter"),
    ("/usr/lib/python3.11/lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so", "SQLite"),
    ("/venv/site-packages/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so", "gRPC"),
    ("/venv/site-packages/uvloop/loop.cpython-311-x86_64-linux-gnu.so", "event loop (uvloop)"),
    ("/lib/x86_64-linux-gnu/libc.so.6", "libc and the loader"),
    ("???", OTHER),
])
def test_object_files_are_named_by_their_part(path: str, part: str) -> None:
    assert part_of(path) == part


def test_a_real_dump_splits_into_its_total(tmp_path: Path) -> None:
    # valgrind is on every machine this project runs on (the instructions bench needs it).
    out = tmp_path / "cg.out"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, "-c", "import sqlite3; sqlite3.connect(':memory:')"],
                   check=True, capture_output=True, timeout=300)
    text = out.read_text(errors="replace")
    found = re.search(r"^totals: (\d+)", text, re.M)
    assert found is not None
    split = parts(text.splitlines())
    assert sum(split.values()) == int(found.group(1))
    assert split["Python interpreter"] > split["SQLite"] > 0
