"""server.event_loop: which loop a served sidecar runs on, and a clear error when it cannot."""

from __future__ import annotations

import asyncio
import sys

import pytest

from routing_sidecar.config import parse_config
from routing_sidecar.errors import ConfigError
from routing_sidecar.event_loop import loop_factory, running_loop_name
from tests.conftest import DEFAULT_CONFIG


def _name_on(factory: object) -> str:
    with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[arg-type]
        return runner.run(_name())


async def _name() -> str:
    return running_loop_name()


def test_auto_and_uvloop_run_on_uvloop_asyncio_on_its_own() -> None:
    assert _name_on(loop_factory("auto", "x.yaml")) == "uvloop"
    assert _name_on(loop_factory("uvloop", "x.yaml")) == "uvloop"
    assert loop_factory("asyncio", "x.yaml") is None
    assert _name_on(None) == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a machine without it
    assert loop_factory("auto", "x.yaml") is None
    with pytest.raises(ConfigError) as err:
        loop_factory("uvloop", "conf/router.yaml")
    assert err.value.source == "conf/router.yaml"
    assert err.value.problems == [
        "server.event_loop: uvloop is not installed (pip install uvloop, or choose asyncio)"]


def test_config_takes_the_three_names_and_refuses_others() -> None:
    text = DEFAULT_CONFIG.read_text()
    assert parse_config(text, "a.yaml").server.event_loop == "auto"
    for name in ("uvloop", "asyncio"):
        edited = text.replace("  grace_period_s: 5", f"  grace_period_s: 5\n  event_loop: {name}")
        assert parse_config(edited, "a.yaml").server.event_loop == name
    bad = text.replace("  grace_period_s: 5", "  grace_period_s: 5\n  event_loop: tokio")
    with pytest.raises(ConfigError) as err:
        parse_config(bad, "a.yaml")
    assert any(p.startswith("server.event_loop") for p in err.value.problems), err.value.problems
