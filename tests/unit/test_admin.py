"""The admin section of the config, policy composition, pauses and a breaker reset by hand."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from routing_sidecar.config import RouterConfig, is_loopback_host, parse_config
from routing_sidecar.core.health import BreakerStatus, HealthBook
from routing_sidecar.domain import Attempt, AttemptStatus, ModelSpec
from routing_sidecar.errors import ConfigError
from routing_sidecar.ports import PauseRecord
from routing_sidecar.service.admin import compose
from routing_sidecar.service.pauses import ModelPauses
from tests.conftest import DEFAULT_CONFIG


def shipped(**sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw.update(sections)
    return raw


def load(raw: dict[str, Any]) -> RouterConfig:
    return parse_config(yaml.safe_dump(raw), "test")


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False), ("10.0.0.5", False),
    ("::", False), ("example.com", False), ("", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_admin_listen_and_its_old_name() -> None:
    assert load(shipped()).admin_listen() == "127.0.0.1:9464"
    assert load(shipped(admin={"listen": "127.0.0.1:1"})).admin_listen() == "127.0.0.1:1"
    old = load(shipped(telemetry={"admin_listen": "127.0.0.1:2"}))
    assert old.admin_listen() == "127.0.0.1:2"
    same = shipped(telemetry={"admin_listen": "127.0.0.1:3"}, admin={"listen": "127.0.0.1:3"})
    assert load(same).admin_listen() == "127.0.0.1:3"
    assert load(shipped(admin={"listen": ""})).admin_listen() == ""


@pytest.mark.parametrize(("sections", "problem"), [
    ({"telemetry": {"admin_listen": "127.0.0.1:2"}, "admin": {"listen": "127.0.0.1:3"}},
     "admin.listen: '127.0.0.1:3' differs from telemetry.admin_listen '127.0.0.1:2'"),
    ({"admin": {"listen": "0.0.0.0:9464"}}, "admin.listen: 0.0.0.0:9464 is not a loopback"),
    ({"telemetry": {"admin_listen": "[::]:9464"}},
     "telemetry.admin_listen: [::]:9464 is not a loopback"),
    ({"admin": {"listen": "nowhere"}}, "admin.listen: Value error, expected HOST:PORT"),
    ({"admin": {"idle_timeout_s": 0}}, "admin.idle_timeout_s: Input should be greater than 0"),
    ({"admin": {"token": "abc"}}, "admin.token: Extra inputs are not permitted"),
])
def test_admin_section_problems_name_their_path(sections: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(shipped(**sections))
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_a_remote_admin_port_with_a_token_file_is_allowed() -> None:
    cfg = load(shipped(admin={"listen": "0.0.0.0:9464", "token_file": "/run/secrets/t"}))
    assert cfg.admin_listen() == "0.0.0.0:9464"


def test_a_remote_admin_port_on_a_network_trusted_as_it_is_is_allowed() -> None:
    cfg = load(shipped(admin={"listen": "0.0.0.0:9464"},
                       server={"listen": "127.0.0.1:50051", "allow_insecure_remote": True}))
    assert cfg.admin_listen() == "0.0.0.0:9464"


def test_compose_replaces_one_policy_and_revalidates_everything() -> None:
    cfg = load(shipped(telemetry={"admin_listen": "127.0.0.1:0"}))
    edited = compose(cfg, {"code": {"models": ["glm-4.6"], "objective": "quality"}})
    assert edited.policies["code"].models == ["glm-4.6"]
    assert edited.policies["normal"] == cfg.policies["normal"]
    assert edited.admin_listen() == "127.0.0.1:0"  # set keys survive, defaults stay defaults
    assert edited.rules == cfg.rules and edited.budgets == cfg.budgets
    added = compose(cfg, {"extra": {"models": ["gpt-5-mini"]}})
    assert set(added.policies) == {*cfg.policies, "extra"}
    with pytest.raises(ConfigError) as err:
        compose(cfg, {"code": {"models": ["glm-4.6"], "max_cost_per_task_usd": -1}})
    assert err.value.problems[0].startswith("policies.code.max_cost_per_task_usd:")


SPEC = ModelSpec("m", "p", 1, 1, 1, 1000, 10.0, 0.5)


def test_pauses_give_routing_their_reasons_and_a_reader_keeps_its_version() -> None:
    pauses = ModelPauses()
    before = pauses.paused
    pauses.set(PauseRecord("m", 1767323045.0, "incident 7"))
    pauses.set(PauseRecord("n", 1767323045.0))
    assert pauses.reasons() == {"m": "by an operator since 03:04:05Z: incident 7",
                                "n": "by an operator since 03:04:05Z"}
    assert dict(before) == {}  # a decision in flight keeps what it read
    assert pauses.clear("m") and not pauses.clear("m")
    assert set(pauses.reasons()) == {"n"}


def test_a_breaker_reset_by_hand_closes_it_and_keeps_the_evidence() -> None:
    book = HealthBook(load(shipped()).settings().health)
    failures = [Attempt("m", "p", AttemptStatus.TRANSIENT_ERROR)] * 5
    book.record_outcome(failures, 100.0)
    assert book.breaker("model:m", 100.0).status is BreakerStatus.OPEN
    assert book.blocked(SPEC, 100.0) is not None
    book.drain_changes()
    assert book.reset_breaker("model:m") is True
    assert [(c.scope, c.name, c.opened) for c in book.drain_changes()] == [("model", "m", False)]
    state = book.breaker("model:m", 100.0)
    assert (state.status, state.trips, state.consecutive_failures) == (BreakerStatus.CLOSED, 0, 0)
    assert book.blocked(SPEC, 100.0) is None
    assert book.penalty(SPEC, 100.0) > 0  # the failures still demote it until they fade
    assert book.reset_breaker("model:never-seen") is False
    with pytest.raises(ValueError, match="expected model:NAME"):
        book.reset_breaker("lane:x")
