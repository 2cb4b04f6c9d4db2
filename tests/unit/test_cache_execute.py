"""Execute mode's cache pieces: who is eligible, what is stored, how it replays, who leads."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from routing_sidecar.calls import CallParams, ChatMessage, Role
from routing_sidecar.domain import Requirements, Task
from routing_sidecar.service.cache import Flights
from routing_sidecar.service.cache_execute import (
    NO_OPTIONS,
    Answer,
    CacheOptions,
    answer_entry,
    completion_key,
    eligible,
    replay,
)
from routing_sidecar.settings import CacheSettings

ON = CacheSettings()
MESSAGES = (ChatMessage(Role.USER, "Why is the disk full?"),)
TASK = Task("t-1", "analyze_logs", labels={"project": "alpha", "lane": "triage"})
ANSWER = Answer("d-1", True, "gpt-5-mini", "openai", "Rotate the logs.",
                ("Rotate", " the", " logs."), "stop", 40, 5, 321, cut=False)


@pytest.mark.parametrize(("settings", "temperature", "options", "expected"), [
    (ON, 0.0, NO_OPTIONS, True),
    (ON, None, NO_OPTIONS, False),  # the provider's default temperature is not 0
    (ON, 0.7, NO_OPTIONS, False),
    (ON, 0.7, CacheOptions(given=True), True),  # sending options opts in
    (CacheSettings(deterministic_only=False), 0.7, NO_OPTIONS, True),
    (CacheSettings(enabled=False), 0.0, CacheOptions(given=True), False),
])
def test_who_is_eligible(settings: CacheSettings, temperature: float | None,
                         options: CacheOptions, expected: bool) -> None:
    assert eligible(settings, CallParams(temperature=temperature), options) is expected


def test_the_completion_key_takes_namespace_tenant_and_constraints() -> None:
    params = CallParams(temperature=0.0)
    base = completion_key(ON, TASK, "normal", MESSAGES, params, NO_OPTIONS)
    assert base.namespace == "" and base.partition == (("project", "alpha"),)
    assert completion_key(ON, replace(TASK, task_id="t-2", priority=90), "normal", MESSAGES,
                          params, NO_OPTIONS) == base
    others = [
        completion_key(ON, TASK, "normal", MESSAGES, params, CacheOptions(namespace="n")),
        completion_key(ON, replace(TASK, labels={"project": "beta"}), "normal", MESSAGES,
                       params, NO_OPTIONS),
        completion_key(ON, replace(TASK, requires=Requirements(min_tier=2)), "normal",
                       MESSAGES, params, NO_OPTIONS),
        completion_key(ON, replace(TASK, exclude_models=frozenset({"x"})), "normal", MESSAGES,
                       params, NO_OPTIONS),
        completion_key(ON, TASK, "code", MESSAGES, params, NO_OPTIONS),
    ]
    assert len({k.digest for k in others} | {base.digest}) == len(others) + 1


def test_an_answer_makes_an_entry_that_replays_in_its_pieces() -> None:
    key = completion_key(ON, TASK, "normal", MESSAGES, CallParams(temperature=0.0), NO_OPTIONS)
    entry = answer_entry(key, "alpha", ANSWER, 100.0, 60.0)
    assert entry is not None
    assert (entry.key, entry.project, entry.policy) == (key.digest, "alpha", "normal")
    assert (entry.source_decision_id, entry.model, entry.cost_micros) == ("d-1", "gpt-5-mini",
                                                                          321)
    assert (entry.created_at, entry.expires_at, entry.finish_reason) == (100.0, 160.0, "stop")
    assert replay(entry) == ["Rotate", " the", " logs."]
    # Unicode is cut by characters, not bytes.
    wide = answer_entry(key, "alpha", replace(ANSWER, text="é中🙂!", chunks=("é中", "🙂", "!")),
                        0.0, 1.0)
    assert wide is not None and replay(wide) == ["é中", "🙂", "!"]


def test_an_answer_that_did_not_stream_replays_whole() -> None:
    key = completion_key(ON, TASK, "normal", MESSAGES, CallParams(temperature=0.0), NO_OPTIONS)
    entry = answer_entry(key, "alpha", replace(ANSWER, chunks=()), 0.0, 1.0)
    assert entry is not None and replay(entry) == ["Rotate the logs."]


@pytest.mark.parametrize("answer", [
    replace(ANSWER, success=False),
    replace(ANSWER, cut=True),  # resumed on another model after a cut stream
    replace(ANSWER, finish_reason="length"),
    replace(ANSWER, finish_reason="cancelled"),
    replace(ANSWER, finish_reason="error"),
])
def test_only_whole_successful_answers_are_stored(answer: Answer) -> None:
    key = completion_key(ON, TASK, "normal", MESSAGES, CallParams(temperature=0.0), NO_OPTIONS)
    assert answer_entry(key, "alpha", answer, 0.0, 1.0) is None


async def test_one_flight_per_key_and_everyone_wakes_when_it_lands() -> None:
    flights = Flights()
    assert flights.board("k") is None  # the first leads
    waiting = [flights.board("k") for _ in range(5)]
    assert all(w is not None for w in waiting)
    assert flights.board("other") is None  # another key flies on its own
    woke: list[int] = []

    async def wait(i: int, event: asyncio.Event) -> None:
        await event.wait()
        woke.append(i)

    tasks = [asyncio.create_task(wait(i, w)) for i, w in enumerate(waiting) if w is not None]
    await asyncio.sleep(0)
    assert not woke
    flights.land("k")
    await asyncio.gather(*tasks)
    assert sorted(woke) == [0, 1, 2, 3, 4]
    assert flights.board("k") is None  # landed: the next one leads again
    assert len(flights) == 2
