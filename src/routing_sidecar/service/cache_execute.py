"""Execute mode's side of the response cache: eligibility, keys, entries, replay, coalescing.

Transport-free pieces that `Complete` puts together (service/complete.py): which requests may
be served and stored (`CacheOptions`, `eligible`), the key of a conversation
(`completion_key`), the entry a finished answer makes (`answer_entry`, only for a successful
answer that ended naturally and was never cut), how a hit is replayed in the pieces it was
produced in (`replay`), and `Flights`, which lets one request per key call the provider while
identical requests wait for its answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from routing_sidecar import domain
from routing_sidecar.calls import CallParams, ChatMessage
from routing_sidecar.core.cache_key import CacheKey, deterministic, execute_key, partition_of
from routing_sidecar.settings import CacheSettings

# Only an answer that ended by itself is stored: not one cut at max tokens, filtered, or
# ended by an error or a cancel.
STORED_FINISH = frozenset({"stop"})


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """A request's say over the cache (`CompleteRequest.cache`).

    `given` is True when the request sent options at all: that opts a request that is not
    deterministic (temperature unset or above 0) in, when `cache.deterministic_only` is on.
    """

    no_cache: bool = False  # do not look up (still stored unless no_store)
    no_store: bool = False  # do not store the answer
    ttl_s: float = 0.0  # 0: cache.ttl_s
    namespace: str = ""
    given: bool = False


NO_OPTIONS = CacheOptions()


def eligible(settings: CacheSettings, params: CallParams, options: CacheOptions) -> bool:
    """Whether the cache takes part at all: on, and deterministic (or opted in)."""
    if not settings.enabled:
        return False
    return deterministic(params) or not settings.deterministic_only or options.given


def completion_key(settings: CacheSettings, task: domain.Task, policy: str,
                   messages: Sequence[ChatMessage], params: CallParams,
                   options: CacheOptions) -> CacheKey:
    """The key of a Complete request: tenant, namespace, policy, conversation, parameters."""
    return execute_key(partition_of(task.labels, settings.partition_labels), options.namespace,
                       policy, messages, params, task.requires, task.exclude_models)


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished Complete, as much of it as makes an entry."""

    decision_id: str
    success: bool
    model: str
    provider: str
    text: str
    chunks: tuple[str, ...]  # the deltas as streamed; empty when the request did not stream
    finish_reason: str
    input_tokens: int
    output_tokens: int
    cost_micros: int
    cut: bool  # some attempt failed after streaming text (a resumed or broken stream)


def answer_entry(key: CacheKey, project: str, answer: Answer, now: float,
                 ttl_s: float) -> domain.CacheEntry | None:
    """The entry a finished answer makes, or None when it must not be stored."""
    if not answer.success or answer.cut or answer.finish_reason not in STORED_FINISH:
        return None
    pieces = answer.chunks if "".join(answer.chunks) == answer.text else (answer.text,)
    return domain.CacheEntry(
        key.digest, key.namespace, project, key.policy, answer.text.encode(),
        answer.decision_id, answer.model, answer.provider, answer.cost_micros, now, now + ttl_s,
        chunks=tuple(len(p) for p in pieces), finish_reason=answer.finish_reason,
        input_tokens=answer.input_tokens, output_tokens=answer.output_tokens)


def replay(entry: domain.CacheEntry) -> list[str]:
    """The stored text cut back into the pieces it streamed in."""
    text = entry.value.decode()
    out, at = [], 0
    for n in entry.chunks:
        out.append(text[at:at + n])
        at += n
    if at < len(text):  # an entry without (or with short) chunk lengths: the rest in one piece
        out.append(text[at:])
    return [p for p in out if p]


class Flights:
    """One request per key in flight: the others wait for it to land, then look again."""

    def __init__(self) -> None:
        self._flying: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._flying)

    def board(self, key: str) -> asyncio.Event | None:
        """None: the caller leads (and must `land`); else the event the leader sets."""
        event = self._flying.get(key)
        if event is None:
            self._flying[key] = asyncio.Event()
        return event

    def land(self, key: str) -> None:
        """The leader is done (answer stored or not): wake everyone waiting on the key."""
        event = self._flying.pop(key, None)
        if event is not None:
            event.set()
