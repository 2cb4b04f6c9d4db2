"""Where a callgrind count went: its instructions summed by the library that ran them.

A callgrind dump (format: https://valgrind.org/docs/manual/cl-format.html) names the object
file of every function (`ob=`; a name is spelled out once, where first used by `ob=` or by a
call's `cob=`, and given by its number after that), then each function's own cost per source
line. The cost line right after a `calls=` line is the call's inclusive cost, already counted
in the callee's own lines, so it is skipped. Object files are grouped into the parts below,
the first pattern that matches naming the part.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# (part, pattern on the object file's path), in order: the first match names the part.
PARTS: tuple[tuple[str, str], ...] = (
    ("SQLite", r"libsqlite3|/_sqlite3\."),
    ("protobuf (upb)", r"/google/_upb/"),
    ("gRPC", r"/grpc/_cython/|libgrpc"),
    ("event loop (uvloop)", r"/uvloop/|libuv"),
    ("JSON (orjson)", r"/orjson/"),
    # The interpreter runs the Python code itself: bytecode, objects, the C builtins.
    ("Python interpreter", r"libpython|/bin/python|/lib-dynload/"),
    ("libc and the loader", r"/libc\.so|/ld-linux|/libm\.so|libpthread"),
)
OTHER = "other"
# `ob=(3) /path`, `ob=(3)`, or `ob=/path` without name compression; the same for `cob=`.
_OBJECT = re.compile(r"^(c?ob)=(?:\((\d+)\) ?)?(.*)$")


def part_of(path: str) -> str:
    """The part an object file's instructions count under."""
    for part, pattern in PARTS:
        if re.search(pattern, path):
            return part
    return OTHER


def parts(lines: Iterable[str]) -> dict[str, int]:
    """Instructions per part in one dump (one event, Ir), parts in PARTS order, then other."""
    names: dict[str, str] = {}  # compressed id -> object path
    totals = dict.fromkeys([*(p for p, _ in PARTS), OTHER], 0)
    current = OTHER
    skip_next = False
    for line in lines:
        if not line or line[0] in "#\n":
            continue
        if line.startswith(("ob=", "cob=")):
            found = _OBJECT.match(line.rstrip("\n"))
            assert found is not None  # the pattern matches every such line
            kind, ident, path = found.groups()
            if ident is not None and path:
                names[ident] = path
            if kind == "ob":  # a callee's object (cob=) leaves the current one as it is
                current = part_of(path or names.get(ident or "", ""))
            continue
        if line.startswith("calls="):
            skip_next = True
            continue
        head = line[0]
        if head.isdigit() or head in "+-*":
            if skip_next:
                skip_next = False
                continue
            fields = line.split()
            if len(fields) >= 2:
                totals[current] += int(fields[1])
    return totals
