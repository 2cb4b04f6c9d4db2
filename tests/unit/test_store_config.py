"""store: SQLite by default, PostgreSQL by URL, and the URL's password kept out of sight."""

from __future__ import annotations

import pytest
import yaml

from routing_sidecar.config import DEFAULT_STORE_PATH, RouterConfig, config_hash, parse_config
from routing_sidecar.errors import ConfigError
from tests.conftest import DEFAULT_CONFIG

SECRET = "s3cr3t-Pa55"


def parse(store: object) -> RouterConfig:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    if store is None:
        raw.pop("store", None)
    else:
        raw["store"] = store
    return parse_config(yaml.safe_dump(raw), "router.yaml")


def problems(store: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(store)
    assert SECRET not in caught.value.message
    return caught.value.problems


@pytest.mark.parametrize("store", [None, {}, {"retention_days": 7}])
def test_sqlite_at_the_default_path_unless_told_otherwise(store: object) -> None:
    cfg = parse(store)
    assert (cfg.store.path, cfg.store.url) == (DEFAULT_STORE_PATH, None)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_url_selects_postgresql(scheme: str) -> None:
    cfg = parse({"url": f"{scheme}://router:{SECRET}@db:5432/audit", "pool_size": 8,
                 "connect_timeout_s": 2, "command_timeout_s": 20})
    assert cfg.store.path is None and cfg.store.url is not None
    assert cfg.store.url.endswith("@db:5432/audit")
    assert (cfg.store.pool_size, cfg.store.connect_timeout_s, cfg.store.command_timeout_s) == (
        8, 2.0, 20.0)


def test_the_password_is_masked_in_dumps_and_reprs_and_the_hash_ignores_it() -> None:
    url = f"postgresql://router:{SECRET}@db/audit?sslmode=require&password={SECRET}"
    cfg = parse({"url": url})
    assert cfg.store.url == url  # the store still connects with it
    dumped = cfg.model_dump_json()
    assert SECRET not in dumped and SECRET not in repr(cfg) and SECRET not in str(cfg.store)
    assert "postgresql://router:***@db/audit?sslmode=require&password=***" in dumped
    other = parse({"url": url.replace(SECRET, "another-one")})
    assert config_hash(other) == config_hash(cfg)


@pytest.mark.parametrize(("store", "expected"), [
    ({"url": f"mysql://u:{SECRET}@db/x"}, "store.url: Value error, expected a postgresql://"),
    ({"url": f"postgresql://u:{SECRET}@db:99999/x"}, "store.url: Value error, not a valid"),
    ({"url": f"postgresql://u:{SECRET}@db/x", "path": "var/x.db"}, "not both"),
    ({"path": "var/x.db", "pool_size": 8}, "only a PostgreSQL store (store.url) takes "
                                           "store.pool_size"),
    ({"url": "postgresql://db/x", "pool_size": 1}, "store.pool_size: Input should be greater"),
    ({"url": "postgresql://db/x", "connect_timeout_s": 0}, "store.connect_timeout_s"),
    ({"path": ""}, "store.path"),
])
def test_bad_store_settings_name_the_field_and_never_echo_the_url(
    store: object, expected: str
) -> None:
    found = problems(store)
    assert any(expected in p for p in found), found
