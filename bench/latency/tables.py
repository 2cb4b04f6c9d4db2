"""Plain aligned tables for the terminal and markdown tables for the page."""

from __future__ import annotations

import re
from collections.abc import Sequence


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned table for the console."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    lines = [head, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=False))
                     for line in lines)


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(str(x) for x in line) + " |" for line in lines)


def splice(page: str, heading: str, section: str) -> str:
    """The page with the section under `heading` (to the next `## `) replaced, or appended."""
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(page):
        return pattern.sub(lambda _: section + "\n", page, count=1)
    return page.rstrip("\n") + "\n\n" + section
