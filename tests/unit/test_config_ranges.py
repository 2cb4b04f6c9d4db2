"""Every number finite and in range, store paths usable, zones known: checked at validation.

Each broken config below is the shipped one with one change; `validate` refuses it with a
message naming the path, and a reload with it changes nothing in a running sidecar.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from routing_sidecar import cli
from routing_sidecar.app import Sidecar
from routing_sidecar.config import (
    MAX_TOKENS,
    MAX_USD_PER_MTOK,
    RouterConfig,
    config_hash,
    load_config,
    validate_config,
)
from routing_sidecar.errors import ConfigError
from tests.conftest import config_dict, write_config

Raw = dict[str, Any]
MODEL = "claude-haiku-4-5"


def _set(dotted: str, value: object) -> Callable[[Raw, Path], None]:
    """A change that sets one dotted path (list indexes as numbers) to `value`."""
    def change(raw: Raw, _tmp: Path) -> None:
        *parents, last = dotted.split(".")
        node: Any = raw
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[int(last) if last.isdigit() else last] = value
    return change


def _store_path(make: Callable[[Path], Path]) -> Callable[[Raw, Path], None]:
    def change(raw: Raw, tmp: Path) -> None:
        raw["store"]["path"] = str(make(tmp))
    return change


def _file_as_parent(tmp: Path) -> Path:
    (tmp / "plain").write_text("a file, not a directory\n")
    return tmp / "plain" / "sub" / "routing.db"


BROKEN: list[tuple[str, Callable[[Raw, Path], None], str]] = [
    ("price_inf", _set(f"models.{MODEL}.input_per_mtok", math.inf),
     f"models.{MODEL}.input_per_mtok: Input should be a finite number"),
    ("price_nan", _set(f"models.{MODEL}.output_per_mtok", math.nan),
     f"models.{MODEL}.output_per_mtok: Input should be a finite number"),
    ("price_1e300", _set(f"models.{MODEL}.input_per_mtok", 1e300),
     f"models.{MODEL}.input_per_mtok: Input should be less than or equal to 1000000"),
    ("budget_limit_inf", _set("budgets.0.limit_usd", math.inf),
     "budgets[0].limit_usd: Input should be a finite number"),
    ("budget_limit_1e300", _set("budgets.1.limit_usd", 1e300),
     "budgets[1].limit_usd: Input should be less than or equal to 1000000000"),
    ("task_cap_inf", _set("policies.code.max_cost_per_task_usd", math.inf),
     "policies.code.max_cost_per_task_usd: Input should be a finite number"),
    ("reservation_ttl_tiny", _set("ledger.reservation_ttl_s", 0.000001),
     "ledger.reservation_ttl_s: Input should be greater than or equal to 1"),
    ("reservation_ttl_inf", _set("ledger.reservation_ttl_s", math.inf),
     "ledger.reservation_ttl_s: Input should be a finite number"),
    ("unknown_time_zone", _set("ledger.timezone", "Mars/Olympus_Mons"),
     "ledger.timezone: Value error, unknown time zone 'Mars/Olympus_Mons'"),
    ("store_is_directory", _store_path(lambda tmp: tmp),
     "store.path: {tmp} is a directory"),
    ("store_parent_is_file", _store_path(_file_as_parent),
     "store.path: cannot create directory {tmp}/plain/sub: {tmp}/plain is not a directory"),
    ("retention_days_huge", _set("store.retention_days", 10**12),
     "store.retention_days: Input should be less than or equal to 36500"),
    ("context_window_huge", _set(f"models.{MODEL}.context_window", 10**30),
     f"models.{MODEL}.context_window: Input should be less than or equal to 100000000"),
    ("tokens_per_s_inf", _set(f"models.{MODEL}.tokens_per_s", math.inf),
     f"models.{MODEL}.tokens_per_s: Input should be a finite number"),
    ("max_request_bytes_huge", _set("server.max_request_bytes", 10**12),
     "server.max_request_bytes: Input should be less than or equal to 67108864"),
    ("breaker_cooldown_nan", _set("health.breaker.cooldown_s", math.nan),
     "health.breaker.cooldown_s: Input should be a finite number"),
    ("health_window_inf", _set("health.window_s", math.inf),
     "health.window_s: Input should be a finite number"),
    ("ev_window_huge", _set("tiers.ev_window", 10**12),
     "tiers.ev_window: Input should be less than or equal to 1000000"),
    ("ev_min_samples_above_window", _set("tiers.ev_min_samples", 5000),
     "tiers.ev_min_samples: 5000 is above ev_window 1000"),
    ("prior_strength_inf", _set("learning.prior_strength", math.inf),
     "learning.prior_strength: Input should be a finite number"),
    ("max_projects_huge", _set("limits.max_projects", 10**12),
     "limits.max_projects: Input should be less than or equal to 1000000"),
    ("cache_bytes_huge", _set("cache.max_bytes", 10**15),
     "cache.max_bytes: Input should be less than or equal to 1099511627776"),
    ("cache_sweep_spins", _set("cache.sweep_interval_s", 1e-9),
     "cache.sweep_interval_s: Input should be greater than or equal to 0.1"),
    ("metric_export_spins", _set("telemetry.metric_export_interval_s", 1e-6),
     "telemetry.metric_export_interval_s: Input should be greater than or equal to 0.1"),
    ("backoff_inverted", _set("policies.code.retry", {"base_backoff_s": 5, "max_backoff_s": 1}),
     "policies.code.retry.base_backoff_s: 5 is above max_backoff_s 1"),
    ("outcome_tolerance_nan", _set("outcomes.cost_tolerance", math.nan),
     "outcomes.cost_tolerance: Input should be a finite number"),
]


def _broken(tmp_path: Path, change: Callable[[Raw, Path], None]) -> Raw:
    raw = config_dict(tmp_path)
    change(raw, tmp_path)
    return raw


@pytest.mark.parametrize(("change", "problem"), [(c, p) for _, c, p in BROKEN],
                         ids=[name for name, _, _ in BROKEN])
def test_validation_refuses_with_the_path(
    tmp_path: Path, change: Callable[[Raw, Path], None], problem: str,
) -> None:
    raw = _broken(tmp_path, change)
    with pytest.raises(ConfigError) as info:
        validate_config(raw, "router.yaml")
    expected = problem.format(tmp=tmp_path)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_the_shipped_config_is_in_range(tmp_path: Path) -> None:
    validate_config(config_dict(tmp_path))  # the baseline every broken config departs from


def test_the_price_ceiling_is_accepted_and_its_cost_fits_the_ledger(tmp_path: Path) -> None:
    raw = config_dict(tmp_path)
    raw["models"][MODEL]["input_per_mtok"] = MAX_USD_PER_MTOK
    cfg = validate_config(raw)
    spec = cfg.settings().models[MODEL]
    # The largest window at the ceiling price costs micro-USD far inside a signed 64-bit integer.
    assert spec.input_micros_per_mtok * MAX_TOKENS // 1_000_000 < 2**53


@pytest.mark.parametrize(("text", "problem"), [
    ("ledger: {reservation_ttl_s: .inf}", "ledger.reservation_ttl_s: Input should be a finite"),
    ("ledger: {reservation_ttl_s: .nan}", "ledger.reservation_ttl_s: Input should be a finite"),
    (f"models: {{{MODEL}: {{input_per_mtok: 1e300}}}}",
     f"models.{MODEL}.input_per_mtok: Input should be less than or equal to 1000000"),
])
def test_yaml_spellings_of_inf_nan_and_exponents(
    tmp_path: Path, text: str, problem: str, capsys: pytest.CaptureFixture[str],
) -> None:
    raw = config_dict(tmp_path)
    override = yaml.safe_load(text)
    for section, values in override.items():
        if section == "models":
            raw["models"][MODEL].update(values[MODEL])
        else:
            raw[section].update(values)
    path = write_config(tmp_path, raw)
    assert cli.main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: invalid configuration" in err
    assert problem in err


def test_validate_lists_every_problem_of_one_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    raw = config_dict(tmp_path)
    for _, change, _ in BROKEN[:8]:
        change(raw, tmp_path)
    path = write_config(tmp_path, raw)
    assert cli.main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    for _, _, problem in BROKEN[:8]:
        assert problem.split(":")[0] in err


async def test_reload_with_a_broken_file_applies_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_config(tmp_path, config_dict(tmp_path))
    car = Sidecar(load_config(path), config_path=str(path))
    await car.start()
    try:
        before: RouterConfig = car.cfg
        digest = config_hash(before)
        settings = car.routing.state.settings
        for name, change, _ in BROKEN:
            broken = _broken(tmp_path, change)
            broken["default_policy"] = "code"  # a valid change beside the broken one
            write_config(tmp_path, broken)
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                assert await car.reload() is False, name
            assert [r.getMessage() for r in caplog.records] == ["config reload refused"], name
            assert car.cfg is before and config_hash(car.cfg) == digest, name
            assert car.routing.state.settings is settings, name
    finally:
        await car.stop()
