"""The `providers:` section and `upstream_model`: validation naming the path, and conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from routing_sidecar.calls import ProviderKind
from routing_sidecar.config import parse_config
from routing_sidecar.errors import ConfigError
from tests.conftest import config_dict

DESIGN_PROVIDERS = {
    "openai": {"kind": "openai", "base_url": "https://api.openai.com/v1",
               "api_key_env": "OPENAI_API_KEY"},
    "anthropic": {"kind": "anthropic", "base_url": "https://api.anthropic.com",
                  "api_key_env": "ANTHROPIC_API_KEY"},
    "openrouter": {"kind": "openai", "base_url": "https://openrouter.ai/api/v1",
                   "api_key_env": "OPENROUTER_API_KEY",
                   "headers": {"HTTP-Referer": "https://example.com", "X-Title": "router"}},
    "local": {"kind": "openai", "base_url": "http://127.0.0.1:11434/v1"},
}


def parse(tmp_path: Path, providers: dict[str, Any],
          models: dict[str, dict[str, Any]] | None = None) -> Any:
    raw = config_dict(tmp_path)
    raw["providers"] = providers
    for name, changes in (models or {}).items():
        raw["models"][name].update(changes)
    return parse_config(yaml.safe_dump(raw), "test.yaml")


def problems(tmp_path: Path, providers: dict[str, Any],
             models: dict[str, dict[str, Any]] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, providers, models)
    assert info.value.message.startswith("test.yaml: invalid configuration")
    return info.value.problems


def test_the_design_example_parses_and_converts(tmp_path: Path) -> None:
    cfg = parse(tmp_path, {**DESIGN_PROVIDERS, "demo": {"kind": "fake"},
                           "keyless": {"kind": "openai", "base_url": "https://llm.internal/v1",
                                       "api_key": "none"}},
                {"gpt-5-mini": {"upstream_model": "gpt-5-mini-2025-08-07"}})
    ex = cfg.execution_settings()
    assert set(ex.providers) == {"openai", "anthropic", "openrouter", "local", "demo", "keyless"}
    openai = ex.providers["openai"]
    assert (openai.kind, openai.base_url, openai.api_key_env, openai.key_required) == (
        ProviderKind.OPENAI, "https://api.openai.com/v1", "OPENAI_API_KEY", True)
    assert ex.providers["anthropic"].kind is ProviderKind.ANTHROPIC
    assert dict(ex.providers["openrouter"].headers) == {"HTTP-Referer": "https://example.com",
                                                        "X-Title": "router"}
    # No key needed: a loopback endpoint, the in-process fake, an explicit `api_key: none`.
    assert not ex.providers["local"].key_required
    assert not ex.providers["demo"].key_required
    assert not ex.providers["keyless"].key_required
    assert (openai.timeout_s, openai.connect_timeout_s, openai.first_token_timeout_s,
            openai.max_connections) == (120.0, 5.0, 30.0, 20)
    assert ex.upstream_model("gpt-5-mini") == "gpt-5-mini-2025-08-07"
    assert ex.upstream_model("claude-haiku-4-5") == "claude-haiku-4-5"  # the catalog name
    assert ex.upstream_models["gpt-5"] == "gpt-5"


def test_a_loopback_endpoint_with_a_key_source_still_needs_it(tmp_path: Path) -> None:
    cfg = parse(tmp_path, {"local": {"kind": "openai", "base_url": "http://localhost:8000/v1",
                                     "api_key_file": "/run/secrets/vllm"}})
    assert cfg.execution_settings().providers["local"].key_required


def test_no_providers_section_is_decision_mode(tmp_path: Path) -> None:
    raw = config_dict(tmp_path)
    cfg = parse_config(yaml.safe_dump(raw), "test.yaml")
    ex = cfg.execution_settings()
    assert dict(ex.providers) == {} and ex.upstream_model("gpt-5") == "gpt-5"


def test_models_whose_provider_has_no_entry_are_allowed(tmp_path: Path) -> None:
    # google, minimax, zhipu, deepseek, local, xai have no entry: routable in decision mode.
    cfg = parse(tmp_path, {"openai": DESIGN_PROVIDERS["openai"]})
    assert set(cfg.execution_settings().providers) == {"openai"}


@pytest.mark.parametrize(("entry", "problem"), [
    ({"kind": "openai"}, "providers.x.base_url: required for kind openai"),
    ({"kind": "anthropic", "api_key_env": "K"}, "providers.x.base_url: required"),
    ({"kind": "fake", "base_url": "http://127.0.0.1:1"},
     "providers.x.base_url: kind fake runs in process and takes no base_url"),
    ({"kind": "openai", "base_url": "ftp://h/v1", "api_key_env": "K"},
     "providers.x.base_url: expected an http:// or https:// URL"),
    ({"kind": "openai", "base_url": "api.openai.com/v1", "api_key_env": "K"},
     "providers.x.base_url: expected an http:// or https:// URL"),
    ({"kind": "openai", "base_url": "https://u:p@h/v1", "api_key_env": "K"},
     "providers.x.base_url: credentials do not belong in the URL"),
    ({"kind": "openai", "base_url": "https://h/v1?key=abc", "api_key_env": "K"},
     "providers.x.base_url: a base URL takes no query or fragment"),
    ({"kind": "openai", "base_url": "https://h/v1", "api_key_env": "K", "api_key_file": "f"},
     "providers.x: give at most one of api_key_env, api_key_file, api_key"),
    ({"kind": "openai", "base_url": "https://h/v1", "api_key_env": "K", "api_key": "none"},
     "providers.x: give at most one"),
    ({"kind": "openai", "base_url": "https://h/v1", "api_key_env": "MY KEY"},
     "providers.x.api_key_env: 'MY KEY' is not an environment variable name"),
    ({"kind": "openai", "base_url": "https://h/v1"},
     "providers.x: a remote endpoint needs api_key_env or api_key_file"),
    ({"kind": "openai", "base_url": "https://h/v1", "api_key_env": "K",
      "headers": {"Authorization": "Bearer sk-in-the-file"}},
     "providers.x.headers.Authorization: credentials come from api_key_env or api_key_file"),
    ({"kind": "anthropic", "base_url": "https://h", "api_key_env": "K",
      "headers": {"X-Api-Key": "sk"}}, "providers.x.headers.X-Api-Key: credentials come"),
    ({"kind": "openai", "base_url": "https://h/v1", "api_key_env": "K",
      "headers": {"X-Title": "a\r\nInjected: 1"}},
     "providers.x.headers.X-Title: a header value cannot contain a line break"),
    ({"kind": "openai", "base_url": "https://h/v1", "api_key_env": "K",
      "headers": {"Bad Name": "v"}}, "providers.x.headers.Bad Name: not a valid header name"),
    ({"kind": "openai", "base_url": "https://h/v1", "api_key_env": "K", "timeout_s": 10,
      "first_token_timeout_s": 20},
     "providers.x.first_token_timeout_s: 20 is above timeout_s 10"),
    ({"kind": "openai", "base_url": "https://h/v1", "api_key_env": "K", "timeout_s": 10,
      "connect_timeout_s": 11}, "providers.x.connect_timeout_s: 11 is above timeout_s 10"),
])
def test_provider_problems_name_their_path(tmp_path: Path, entry: dict[str, Any],
                                           problem: str) -> None:
    found = problems(tmp_path, {"x": entry})
    assert any(p.startswith(problem) for p in found), found


@pytest.mark.parametrize(("entry", "path"), [
    ({"kind": "gemini", "base_url": "https://h"}, "providers.x.kind"),
    ({"kind": "openai", "base_url": "https://h", "api_key_env": "K", "timeout_s": 0},
     "providers.x.timeout_s"),
    ({"kind": "openai", "base_url": "https://h", "api_key_env": "K", "timeout_s": ".inf"},
     "providers.x.timeout_s"),
    ({"kind": "openai", "base_url": "https://h", "api_key_env": "K", "max_connections": 0},
     "providers.x.max_connections"),
    ({"kind": "openai", "base_url": "https://h", "api_key": "secret-value"},
     "providers.x.api_key"),
    ({"kind": "openai", "base_url": "https://h", "api_key_env": "K", "retries": 3},
     "providers.x.retries"),
])
def test_provider_field_errors_name_their_path(tmp_path: Path, entry: dict[str, Any],
                                               path: str) -> None:
    if entry.get("timeout_s") == ".inf":
        raw = config_dict(tmp_path)
        text = yaml.safe_dump({**raw, "providers": {"x": {**entry, "timeout_s": 1}}})
        text = text.replace("timeout_s: 1\n", "timeout_s: .inf\n")
        with pytest.raises(ConfigError) as info:
            parse_config(text, "test.yaml")
        found = info.value.problems
    else:
        found = problems(tmp_path, {"x": entry})
    assert any(p.startswith(path + ":") for p in found), found


def test_a_secret_api_key_value_is_never_echoed(tmp_path: Path) -> None:
    found = problems(tmp_path, {"x": {"kind": "openai", "base_url": "https://h",
                                      "api_key": "sk-live-abcdef"}})
    assert not any("sk-live-abcdef" in p for p in found)


def test_upstream_model_without_a_provider_entry(tmp_path: Path) -> None:
    found = problems(tmp_path, {"openai": DESIGN_PROVIDERS["openai"]},
                     {"gemini-2.5-flash": {"upstream_model": "gemini-2.5-flash-001"}})
    assert found == ["models.gemini-2.5-flash.upstream_model: provider 'google' has no entry "
                     "under providers, so nothing would send it"]


def test_upstream_model_must_not_be_empty(tmp_path: Path) -> None:
    found = problems(tmp_path, {"openai": DESIGN_PROVIDERS["openai"]},
                     {"gpt-5": {"upstream_model": ""}})
    assert any(p.startswith("models.gpt-5.upstream_model:") for p in found), found
