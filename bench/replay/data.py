"""Replay data: the paretobandit jsonl files as rows, and catalog prices fitted to their costs.

`python -m bench.replay.data` prints the per-model prices fitted on the val file (the numbers
in config/replay.yaml).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import REPO

# Beside the checkout: /work/shared/data/replay for /work/main and for every worktree.
DATA_DIR = REPO.parent / "shared" / "data" / "replay"
FILES = {"val": "paretobandit_val.jsonl", "test": "paretobandit_test.jsonl"}
# The data's arm names -> the catalog's model names in config/replay.yaml, cheapest first.
ARMS: Mapping[str, str] = {
    "meta-llama/llama-3.1-8b-instruct": "llama-3.1-8b",
    "mistralai/mistral-large-2512": "mistral-large-2512",
    "google/gemini-2.5-pro": "gemini-2.5-pro",
}
MODELS: tuple[str, ...] = tuple(ARMS.values())
SHORT: Mapping[str, str] = {"llama-3.1-8b": "llama", "mistral-large-2512": "mistral",
                            "gemini-2.5-pro": "gemini"}
WEAK, STRONG = "llama-3.1-8b", "gemini-2.5-pro"
# Every Route asks for this many output tokens; the fitted output price absorbs the real
# (unknown, often reasoning-heavy) output length.
MAX_OUTPUT_TOKENS = 1024
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Row:
    """One prompt: its task type, estimated input tokens, and each model's reward and cost."""

    source: str
    input_tokens: int
    reward: Mapping[str, float]
    cost: Mapping[str, float]  # USD


def estimate_tokens(prompt: str) -> int:
    """Input tokens estimated from the prompt's length (about four characters a token)."""
    return max(1, math.ceil(len(prompt) / CHARS_PER_TOKEN))


def parse_row(obj: Mapping[str, object]) -> Row:
    """A Row from one decoded jsonl object."""
    arms = obj["arms"]
    assert isinstance(arms, dict)
    prompt = obj["prompt"]
    assert isinstance(prompt, str)
    return Row(
        source=str(obj["source"]),
        input_tokens=estimate_tokens(prompt),
        reward={ARMS[a]: float(v["reward"]) for a, v in arms.items()},
        cost={ARMS[a]: float(v["cost"]) for a, v in arms.items()},
    )


def data_path(name: str) -> Path:
    """Path of the 'val' or 'test' file (or a path given as is)."""
    return DATA_DIR / FILES[name] if name in FILES else Path(name)


def load(name: str) -> list[Row]:
    """Every row of a replay file, in file order."""
    with data_path(name).open(encoding="utf-8") as f:
        return [parse_row(json.loads(line)) for line in f if line.strip()]


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float


def fit_price(tokens: Sequence[int], costs: Sequence[float], max_output: int) -> Price:
    """Least squares cost ~ a * input_tokens + b with a >= 0; b pays for max_output tokens.

    With an intercept the fit passes through the means, so the catalog estimate of an average
    prompt equals the data's mean cost. A negative slope (cost does not grow with the prompt)
    is clipped to 0 and the whole mean goes to the output price.
    """
    mx, my = statistics.fmean(tokens), statistics.fmean(costs)
    sxx = sum((x - mx) ** 2 for x in tokens)
    sxy = sum((x - mx) * (y - my) for x, y in zip(tokens, costs, strict=True))
    slope = max(0.0, sxy / sxx) if sxx else 0.0
    intercept = my - slope * mx
    return Price(slope * 1e6, intercept / max_output * 1e6)


def fit_prices(rows: Sequence[Row], max_output: int = MAX_OUTPUT_TOKENS) -> dict[str, Price]:
    """Per-model prices fitted on `rows` (use the val file)."""
    tokens = [r.input_tokens for r in rows]
    return {m: fit_price(tokens, [r.cost[m] for r in rows], max_output) for m in MODELS}


def estimate_usd(price: Price, input_tokens: int, max_output: int = MAX_OUTPUT_TOKENS) -> float:
    """The catalog's estimate for one call, in USD (before rounding up to micro-USD)."""
    return (input_tokens * price.input_per_mtok + max_output * price.output_per_mtok) / 1e6


def implied_output_tokens(price: Price, input_tokens: int, cost_usd: float) -> int:
    """Output tokens that, at `price`, make a call with `input_tokens` cost `cost_usd`.

    The data records costs, not token counts; an outcome must report tokens its cost can be
    checked against, so it reports the ones the catalog prices imply.
    """
    if price.output_per_mtok <= 0:
        return 0
    rest = cost_usd * 1e6 - input_tokens * price.input_per_mtok
    return max(0, math.ceil(rest / price.output_per_mtok))


def main() -> None:
    """Print prices fitted on val and how well they reproduce val and test mean costs."""
    val, test = load("val"), load("test")
    prices = fit_prices(val)
    for m, p in prices.items():
        est = {name: statistics.fmean(estimate_usd(p, r.input_tokens) for r in rows)
               for name, rows in (("val", val), ("test", test))}
        real = {name: statistics.fmean(r.cost[m] for r in rows)
                for name, rows in (("val", val), ("test", test))}
        print(f"{m:<20} input_per_mtok: {p.input_per_mtok:.4f}  output_per_mtok: "
              f"{p.output_per_mtok:.4f}  | mean est/real val {est['val']:.3e}/{real['val']:.3e}"
              f"  test {est['test']:.3e}/{real['test']:.3e}")


if __name__ == "__main__":
    main()
