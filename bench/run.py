"""`python -m bench.run`: the former name of `python -m bench.latency` (same options)."""

from __future__ import annotations

import sys

from bench.latency.__main__ import entry

if __name__ == "__main__":
    sys.exit(entry())
