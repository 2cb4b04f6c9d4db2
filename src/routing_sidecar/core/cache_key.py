"""Canonical request -> response-cache key: a digest of everything that can change the answer.

A key is the SHA-256 of one canonical JSON document: the key's kind (a decision-mode key never
meets an execute-mode one), the partition labels (the tenant: by default `project`, so one
project never sees another's entries), the caller's namespace, the resolved policy, and then
either the caller's own `cache_key` string (decision mode) or the request itself (execute
mode): the messages, role and content exactly as sent, the parameters that change the answer
(temperature, stop sequences, max output tokens, response format) and the hard constraints on
which model may answer (required tier, capabilities and quality, excluded models).

What is canonicalised away, because it cannot change the answer: the order of labels and of
stop sequences, repeated stop sequences, capabilities and exclusions, `0` vs `0.0` vs `-0.0`,
and the layout of the request on the wire (JSON whitespace, field or key order), since the
digest is taken over parsed values, never over bytes. Left out on purpose: the task id,
priority, EV, value, objective, slots and every non-partition label: they steer the choice of
model, not what a right answer is. Prompt text never leaves this module except as a digest.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import orjson

from routing_sidecar.calls import CallParams, ChatMessage
from routing_sidecar.domain import Requirements

KEY_VERSION = 1
_NO_REQUIREMENTS = Requirements()


class KeyKind(StrEnum):
    """Who stores under a key: the orchestrator (decision mode) or the sidecar (execute mode)."""

    DECISION = "decision"
    EXECUTE = "execute"


@dataclass(frozen=True, slots=True)
class CacheKey:
    """A cache key: its digest and the partition it belongs to (for stats and purges)."""

    digest: str  # 64 hex characters
    kind: KeyKind
    namespace: str
    policy: str
    # (label, value) for each partition label, in the configured order; "" when absent.
    partition: tuple[tuple[str, str], ...]

    @property
    def short(self) -> str:
        """The first 16 hex digits, enough to name an entry in logs and spans."""
        return self.digest[:16]


def partition_of(labels: Mapping[str, str], partition_labels: Sequence[str]) -> tuple[
        tuple[str, str], ...]:
    """The tenant of a request: the value of each partition label ("" when the label is absent)."""
    return tuple((name, labels.get(name, "")) for name in partition_labels)


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise ValueError(f"a cache key cannot hold the number {value!r}")
    return float(value) + 0.0  # 0 and -0.0 both become 0.0


def _sorted_unique(items: Iterable[str]) -> list[str]:
    return sorted(set(items))


def _digest(document: object) -> str:
    # orjson writes compact JSON with sorted keys and one spelling per float: a canonical form.
    raw = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


def _head(kind: KeyKind, partition: Sequence[tuple[str, str]], namespace: str,
          policy: str) -> dict[str, object]:
    return {
        "v": KEY_VERSION,
        "kind": kind.value,
        # Sorted by label name: the same tenant whatever order the config lists its labels in.
        "partition": sorted([name, value] for name, value in partition),
        "namespace": namespace,
        "policy": policy,
    }


def decision_key(partition: Sequence[tuple[str, str]], namespace: str, policy: str,
                 cache_key: str) -> CacheKey:
    """The key of a decision-mode request: the caller's `cache_key` string in its tenant."""
    doc = _head(KeyKind.DECISION, partition, namespace, policy)
    doc["cache_key"] = cache_key
    return CacheKey(_digest(doc), KeyKind.DECISION, namespace, policy, tuple(partition))


def execute_key(partition: Sequence[tuple[str, str]], namespace: str, policy: str,
                messages: Sequence[ChatMessage], params: CallParams,
                requires: Requirements = _NO_REQUIREMENTS,
                exclude_models: Iterable[str] = ()) -> CacheKey:
    """The key of an execute-mode request: the conversation and what shapes its answer.

    `params` are the parameters as sent to the provider (the request's, else the policy's).
    """
    doc = _head(KeyKind.EXECUTE, partition, namespace, policy)
    doc["messages"] = [[m.role.value, m.content] for m in messages]
    doc["params"] = {
        "temperature": _number(params.temperature),
        "stop": _sorted_unique(params.stop),
        "max_output_tokens": params.max_output_tokens,
        "response_format": params.response_format.value,
    }
    doc["requires"] = {
        "min_tier": requires.min_tier,
        "capabilities": _sorted_unique(requires.capabilities),
        "min_quality": _number(requires.min_quality),
    }
    doc["exclude_models"] = _sorted_unique(exclude_models)
    return CacheKey(_digest(doc), KeyKind.EXECUTE, namespace, policy, tuple(partition))


def deterministic(params: CallParams) -> bool:
    """True when the answer is meant to be reproducible: temperature given and zero."""
    return params.temperature is not None and params.temperature == 0.0
