"""Execute mode's policy keys: parsed, converted, and checked against the rest of the policy."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from routing_sidecar.config import parse_config
from routing_sidecar.errors import ConfigError


def raw(**policy: Any) -> str:
    model = {"provider": "p", "tier": 1, "input_per_mtok": 1, "output_per_mtok": 1,
             "context_window": 1000, "tokens_per_s": 10, "quality": 0.5}
    return yaml.safe_dump({
        "models": {"a": model, "b": {**model, "provider": "q"}},
        "policies": {"main": {"models": ["a", "b"], **policy}},
        "default_policy": "main",
    })


def test_the_keys_reach_the_domain_policy() -> None:
    cfg = parse_config(raw(resume_on_stream_failure=True, hedge_after_ms=750), "t")
    policy = cfg.settings().policies["main"]
    assert (policy.resume_on_stream_failure, policy.hedge_after_ms) == (True, 750)
    plain = parse_config(raw(), "t").settings().policies["main"]
    assert (plain.resume_on_stream_failure, plain.hedge_after_ms) == (False, None)


@pytest.mark.parametrize(("policy", "problem"), [
    ({"hedge_after_ms": 0}, "policies.main.hedge_after_ms: Input should be greater than"),
    ({"hedge_after_ms": 500, "fallbacks": 0},
     "policies.main.hedge_after_ms: a hedge starts the first fallback, and fallbacks is 0"),
    ({"resume_on_stream_failure": "maybe"}, "policies.main.resume_on_stream_failure:"),
])
def test_bad_values_name_their_path(policy: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw(**policy), "t")
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems
