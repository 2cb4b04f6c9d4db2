"""Execute mode's side of the response cache: eligibility, keys, entries, replay, coalescing.

`answer_cached` is `Complete` with the cache in front (service/complete.py calls it): a request
the cache takes part in (`eligible`: deterministic, or opted in with `CacheOptions`) is looked
up under its key (`completion_key`); a hit is a CACHE_HIT decision, audited, reserving nothing,
its text replayed in the pieces it streamed in (`replay`) and `Done.cache_hit`; a miss waits
while an identical request is already calling the provider (`Flights`, one call per key) and
then looks again, or makes the call itself and stores what it got, when that is a successful
answer that ended by itself and was never cut (`answer_entry`), before `Done` acknowledges it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from routing_sidecar import domain
from routing_sidecar.calls import CallParams, ChatMessage, TextDelta
from routing_sidecar.core.cache_key import CacheKey, deterministic, execute_key, partition_of
from routing_sidecar.core.rules import resolve_policy
from routing_sidecar.errors import InvalidArgument, ResourceExhausted
from routing_sidecar.service.cache import CacheService, project_of
from routing_sidecar.service.routing import TraceIds
from routing_sidecar.settings import CacheSettings

if TYPE_CHECKING:  # complete.py imports this module
    from routing_sidecar.service.complete import (
        CompleteEvent,
        CompleteRequest,
        CompleteService,
    )

SUCCESS, CANCELLED = domain.AttemptStatus.SUCCESS, domain.AttemptStatus.CANCELLED


@dataclass(frozen=True, slots=True)
class ReplayedDelta(TextDelta):
    """A piece of a cached answer, replayed: never joined with its neighbours on the way out."""
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


def answered(events: Sequence[CompleteEvent]) -> Answer | None:
    """What a finished Complete's events make as an Answer (None without a Done)."""
    from routing_sidecar.service.complete import Done, ExecutedAttempt  # noqa: PLC0415

    deltas: list[str] = []
    cut = False
    done: Done | None = None
    for event in events:
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        elif isinstance(event, ExecutedAttempt) and event.status not in (SUCCESS, CANCELLED):
            # Text already sent before this attempt failed, or output it consumed: a cut stream
            # (resumed on another model or not), so not one model's whole answer. A cancelled
            # attempt (a hedge that lost) cuts nothing the caller received.
            cut = cut or bool(deltas) or event.output_tokens > 0
        elif isinstance(event, Done):
            done = event
    if done is None:
        return None
    text = done.text or "".join(deltas)
    return Answer(done.decision_id, done.success, done.model, done.provider, text,
                  tuple(deltas), done.finish_reason, done.input_tokens, done.output_tokens,
                  done.cost_micros, cut)


def _plan(cache: CacheService, svc: CompleteService,
          request: CompleteRequest) -> tuple[CacheKey, domain.Task] | None:
    """The request's key and (label-admitted) task, or None when the cache takes no part."""
    from routing_sidecar.service.walk import call_params  # noqa: PLC0415

    settings = cache.settings
    if not settings.enabled:
        return None
    state = svc.routing.state
    try:
        task = svc.routing.limits.admit(request.task, state.settings.limits)
        policy = resolve_policy(task, state.catalog)
    except (InvalidArgument, ResourceExhausted) as exc:  # fields of the RouteRequest
        raise type(exc)(f"route.{exc.field}", exc.message.removeprefix(f"{exc.field}: ")
                        ) from None
    params = call_params(request, policy)
    if not eligible(settings, params, request.cache):
        return None
    key = completion_key(settings, task, policy.name, request.messages, params, request.cache)
    return key, task


async def _hit(svc: CompleteService, entry: domain.CacheEntry, request: CompleteRequest,
               trace: TraceIds) -> AsyncGenerator[CompleteEvent, None]:
    from routing_sidecar.service.complete import Done  # noqa: PLC0415

    decided = svc.routing.decide_cached(request.task, entry, trace)
    await svc.routing.commit(decided)
    yield replace(decided.decision, cache_lookup=True)
    if request.stream:
        for piece in replay(entry):
            yield ReplayedDelta(piece)
    yield Done(decided.decision.decision_id, True, entry.model, entry.provider,
               text=entry.value.decode(), finish_reason=entry.finish_reason, cache_hit=True)


async def _call(svc: CompleteService, cache: CacheService, key: CacheKey, project: str,
                request: CompleteRequest, trace: TraceIds, timeout_s: float | None,
                ) -> AsyncGenerator[CompleteEvent, None]:
    """The walk, its events passed on; a storable answer is stored before its Done goes out."""
    from routing_sidecar.service.complete import Done  # noqa: PLC0415

    seen: list[CompleteEvent] = []
    async with contextlib.aclosing(svc.walk(request, trace, timeout_s)) as events:
        async for got in events:
            event = replace(got, cache_lookup=True) if isinstance(got, domain.Decision) else got
            seen.append(event)
            if isinstance(event, Done) and not request.cache.no_store:
                await _store(cache, key, project, seen, request.cache.ttl_s)
            yield event


async def _store(cache: CacheService, key: CacheKey, project: str,
                 events: Sequence[CompleteEvent], ttl_s: float) -> bool:
    answer = answered(events)
    if answer is None:
        return False
    settings = cache.settings
    entry = answer_entry(key, project, answer, cache.now(), ttl_s or settings.ttl_s)
    if entry is None or len(entry.value) > settings.max_value_bytes:
        return False
    return await cache.store(entry)


async def answer_cached(svc: CompleteService, cache: CacheService, request: CompleteRequest,
                        trace: TraceIds, timeout_s: float | None,
                        ) -> AsyncGenerator[CompleteEvent, None]:
    """Complete with the response cache in front (see the module's docstring)."""
    plan = _plan(cache, svc, request)
    if plan is None:
        run = svc.walk(request, trace, timeout_s)
    else:
        key, task = plan
        project = project_of(task)
        entry, leading = None, False
        while not request.cache.no_cache:  # no_cache: no lookup, no waiting, a call of its own
            entry = await cache.lookup(key, project, count=False)
            if entry is not None:
                break
            waiting = cache.flights.board(key.digest)
            if waiting is None:
                leading = True
                break
            await waiting.wait()  # an identical request is calling: its answer, then look again
        if not request.cache.no_cache:
            cache.count_lookup(key, project, entry)
        run = (_hit(svc, entry, request, trace) if entry is not None
               else _call(svc, cache, key, project, request, trace, timeout_s))
    try:
        async with contextlib.aclosing(run) as events:
            async for event in events:
                yield event
    finally:
        if plan is not None and leading:
            cache.flights.land(plan[0].digest)
