"""The `cache:` section: defaults, conversion, and validation naming the path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from routing_sidecar.config import RESTART_ONLY, RouterConfig, parse_config
from routing_sidecar.errors import ConfigError
from routing_sidecar.settings import CacheSettings
from tests.conftest import config_dict


def parse(tmp_path: Path, fleet: dict[str, Any] | None = None, **cache: Any) -> RouterConfig:
    raw = config_dict(tmp_path)
    raw["cache"] = cache
    if fleet is not None:
        raw["fleet"] = fleet
    return parse_config(yaml.safe_dump(raw), "test.yaml")


def test_defaults_follow_the_design(tmp_path: Path) -> None:
    s = parse(tmp_path).settings().cache
    assert s == CacheSettings()
    assert (s.enabled, s.ttl_s, s.max_entries, s.partition_labels, s.deterministic_only) == (
        True, 86_400.0, 100_000, ("project",), True)


def test_every_key_converts(tmp_path: Path) -> None:
    cfg = parse(tmp_path, enabled=False, ttl_s=60, max_entries=10, max_bytes=4096,
                max_value_bytes=2048, partition_labels=["project", "team"],
                deterministic_only=False, sweep_interval_s=2, path="var/pod-cache.db")
    assert cfg.settings().cache == CacheSettings(False, 60.0, 10, 4096, 2048,
                                                 ("project", "team"), False, 2.0)
    assert (cfg.cache.backend, cfg.cache.path) == ("sqlite", "var/pod-cache.db")
    fleet = parse(tmp_path, fleet={"redis_url_env": "FLEET_REDIS_URL"}, backend="redis")
    assert fleet.cache.backend == "redis"


@pytest.mark.parametrize(("cache", "problem"), [
    ({"ttl_s": 0}, "cache.ttl_s:"),
    ({"max_entries": 0}, "cache.max_entries:"),
    ({"max_bytes": 10}, "cache.max_bytes:"),
    ({"max_value_bytes": 2048, "max_bytes": 1024}, "cache.max_value_bytes: 2048 is above"),
    ({"partition_labels": ["project", "project"]}, "cache.partition_labels:"),
    ({"partition_labels": ["not a label"]}, "cache.partition_labels:"),
    ({"backend": "memcached"}, "cache.backend:"),
    ({"backend": "redis"}, "cache.backend: redis shares the fleet's Redis"),
    ({"path": ""}, "cache.path:"),
    ({"tll_s": 5}, "cache.tll_s:"),
])
def test_bad_values_name_their_path(tmp_path: Path, cache: dict[str, Any],
                                    problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, **cache)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_the_back_end_changes_only_on_restart(tmp_path: Path) -> None:
    a = parse(tmp_path)
    b = parse(tmp_path, path="elsewhere.db")
    c = parse(tmp_path, ttl_s=5, max_entries=7)
    stale = [k for k, read in RESTART_ONLY.items() if read(a) != read(b)]
    assert stale == ["cache.backend"]
    assert not [k for k, read in RESTART_ONLY.items() if read(a) != read(c)]
