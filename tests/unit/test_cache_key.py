"""The response-cache key: what lands on the same entry and what must miss."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing_sidecar.calls import CallParams, ChatMessage, ResponseFormat, Role
from routing_sidecar.core.cache_key import (
    CacheKey,
    KeyKind,
    decision_key,
    deterministic,
    execute_key,
    partition_of,
)
from routing_sidecar.domain import Requirements

SYSTEM = ChatMessage(Role.SYSTEM, "You triage logs.")
USER = ChatMessage(Role.USER, "ERROR disk full on /var")
ALPHA = (("project", "alpha"),)

BASE: dict[str, Any] = {
    "partition": ALPHA,
    "namespace": "",
    "policy": "normal",
    "messages": (SYSTEM, USER),
    "params": CallParams(temperature=0.0, stop=(), max_output_tokens=500),
    "requires": Requirements(),
    "exclude_models": (),
}


def key(**changes: Any) -> CacheKey:
    args = {**BASE, **changes}
    return execute_key(args["partition"], args["namespace"], args["policy"], args["messages"],
                       args["params"], args["requires"], args["exclude_models"])


P = BASE["params"]

# Each row changes one thing that cannot change the answer: the key must stay the same.
SAME = [
    ("temperature 0 as an int", {"params": replace(P, temperature=0)}),
    ("temperature -0.0", {"params": replace(P, temperature=-0.0)}),
    ("stop order",
     {"params": replace(P, stop=("b", "a"))}, {"params": replace(P, stop=("a", "b"))}),
    ("stop repeated",
     {"params": replace(P, stop=("a", "a"))}, {"params": replace(P, stop=("a",))}),
    ("capabilities order",
     {"requires": Requirements(capabilities=frozenset({"code", "tools"}))},
     {"requires": Requirements(capabilities=frozenset({"tools", "code"}))}),
    ("exclusion order", {"exclude_models": ("b", "a")}, {"exclude_models": ("a", "b")}),
    ("partition label order",
     {"partition": (("project", "alpha"), ("team", "x"))},
     {"partition": (("team", "x"), ("project", "alpha"))}),
]

# Each row changes one thing that can change the answer (or the tenant): the key must differ.
DIFFERENT = [
    ("another project", {"partition": (("project", "beta"),)}),
    ("no project label", {"partition": (("project", ""),)}),
    ("another partition label", {"partition": (("team", "alpha"),)}),
    ("a namespace", {"namespace": "nightly"}),
    ("another policy", {"policy": "code"}),
    ("one more message", {"messages": (SYSTEM, USER, USER)}),
    ("messages swapped", {"messages": (USER, SYSTEM)}),
    ("another role", {"messages": (SYSTEM, ChatMessage(Role.ASSISTANT, USER.content))}),
    ("a space inside the prompt",
     {"messages": (SYSTEM, ChatMessage(Role.USER, USER.content + " "))}),
    ("case of the prompt", {"messages": (SYSTEM, ChatMessage(Role.USER, USER.content.lower()))}),
    ("content moved across messages",
     {"messages": (ChatMessage(Role.SYSTEM, "You triage logs.ERROR"),
                   ChatMessage(Role.USER, " disk full on /var"))}),
    ("temperature 0.2", {"params": replace(P, temperature=0.2)}),
    ("temperature unset", {"params": replace(P, temperature=None)}),
    ("a stop sequence", {"params": replace(P, stop=("\n\n",))}),
    ("max output tokens", {"params": replace(P, max_output_tokens=501)}),
    ("max output tokens unset", {"params": replace(P, max_output_tokens=None)}),
    ("json response", {"params": replace(P, response_format=ResponseFormat.JSON_OBJECT)}),
    ("a min tier", {"requires": Requirements(min_tier=2)}),
    ("a capability", {"requires": Requirements(capabilities=frozenset({"vision"}))}),
    ("a quality floor", {"requires": Requirements(min_quality=0.8)}),
    ("an exclusion", {"exclude_models": ("gpt-5",)}),
]


@pytest.mark.parametrize("row", SAME, ids=[r[0] for r in SAME])
def test_changes_that_cannot_change_the_answer_hit_the_same_entry(row: tuple[Any, ...]) -> None:
    first = key(**row[1])
    second = key(**row[2]) if len(row) > 2 else key()
    assert first.digest == second.digest


@pytest.mark.parametrize("row", DIFFERENT, ids=[r[0] for r in DIFFERENT])
def test_changes_that_can_change_the_answer_miss(row: tuple[str, dict[str, Any]]) -> None:
    assert key(**row[1]).digest != key().digest


def test_every_difference_gives_its_own_key() -> None:
    digests = {key(**changes).digest for _, changes in DIFFERENT} | {key().digest}
    assert len(digests) == len(DIFFERENT) + 1


def test_the_wire_layout_of_a_request_does_not_matter() -> None:
    # The same request sent as JSON twice: other whitespace, other key order, labels reordered.
    a = json.loads('{"labels": {"project": "alpha", "lane": "x"}, "messages": '
                   '[{"role": "user", "content": "hi  there"}], "temperature": 0}')
    b = json.loads('{ "temperature" : 0.0,\n  "messages":[ {"content":"hi  there","role":"user"} ],'
                   '\n  "labels":{ "lane":"x","project":"alpha" } }')

    def from_json(doc: dict[str, Any]) -> CacheKey:
        messages = tuple(ChatMessage(Role(m["role"]), m["content"]) for m in doc["messages"])
        return execute_key(partition_of(doc["labels"], ["project", "lane"]), "", "normal",
                           messages, CallParams(temperature=doc["temperature"]))

    assert from_json(a).digest == from_json(b).digest


def test_partition_takes_the_configured_labels_only() -> None:
    labels = {"project": "alpha", "worker": "w1", "lane": "triage"}
    assert partition_of(labels, ["project"]) == (("project", "alpha"),)
    assert partition_of(labels, ["project", "team"]) == (("project", "alpha"), ("team", ""))
    assert partition_of(labels, []) == ()
    # A label outside the partition does not split the cache.
    other_worker = partition_of({**labels, "worker": "w2"}, ["project"])
    same = partition_of(labels, ["project"])
    assert key(partition=other_worker).digest == key(partition=same).digest


DECISION_BASE = (ALPHA, "", "normal", "health-check:db")
DECISION_DIFFERENT = [
    ("another cache_key", (ALPHA, "", "normal", "health-check:api")),
    ("another project", ((("project", "beta"),), "", "normal", "health-check:db")),
    ("a namespace", (ALPHA, "nightly", "normal", "health-check:db")),
    ("another policy", (ALPHA, "", "code", "health-check:db")),
]


@pytest.mark.parametrize("row", DECISION_DIFFERENT, ids=[r[0] for r in DECISION_DIFFERENT])
def test_decision_keys_split_by_key_string_tenant_namespace_and_policy(
    row: tuple[str, tuple[Any, ...]],
) -> None:
    assert decision_key(*row[1]).digest != decision_key(*DECISION_BASE).digest


def test_decision_key_is_stable_and_says_what_it_is() -> None:
    first, second = decision_key(*DECISION_BASE), decision_key(*DECISION_BASE)
    assert first == second
    assert first.kind is KeyKind.DECISION
    assert (first.namespace, first.policy, first.partition) == ("", "normal", ALPHA)
    assert len(first.digest) == 64 and int(first.digest, 16) >= 0
    assert first.short == first.digest[:16]


def test_decision_and_execute_keys_never_meet() -> None:
    # A decision-mode key string that spells out an execute request's content still misses.
    execute = key(messages=(ChatMessage(Role.USER, "x"),), params=CallParams())
    decision = decision_key(ALPHA, "", "normal", "x")
    assert execute.kind is KeyKind.EXECUTE
    assert execute.digest != decision.digest


def test_the_key_carries_no_prompt_text() -> None:
    secret = "the quarterly numbers are 42"
    k = key(messages=(ChatMessage(Role.USER, secret),))
    assert secret not in repr(k)
    assert "quarterly" not in repr(k)


def test_a_non_finite_temperature_is_refused() -> None:
    with pytest.raises(ValueError, match="nan"):
        key(params=CallParams(temperature=float("nan")))


@pytest.mark.parametrize(("temperature", "expected"),
                         [(0.0, True), (0, True), (None, False), (0.1, False), (1.0, False)])
def test_only_temperature_zero_is_deterministic(temperature: float | None,
                                                expected: bool) -> None:
    assert deterministic(CallParams(temperature=temperature)) is expected


texts = st.text(max_size=30)


@given(texts, texts, st.lists(texts, max_size=4))
def test_two_different_prompts_never_share_a_key(a: str, b: str, stops: list[str]) -> None:
    params = CallParams(temperature=0.0, stop=tuple(stops))
    ka = key(messages=(ChatMessage(Role.USER, a),), params=params)
    kb = key(messages=(ChatMessage(Role.USER, b),), params=params)
    assert (ka.digest == kb.digest) == (a == b)
