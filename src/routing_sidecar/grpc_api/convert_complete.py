"""CompleteRequest in (validated field by field) and CompleteEvent out: protobuf <-> domain."""

from __future__ import annotations

import math

from google.protobuf.duration_pb2 import Duration

from routing_sidecar import domain
from routing_sidecar.calls import ChatMessage, ResponseFormat, Role, TextDelta
from routing_sidecar.errors import InvalidArgument
from routing_sidecar.grpc_api.convert import decision_to_pb, task_from_pb, timestamp
from routing_sidecar.grpc_api.convert_cache import namespace
from routing_sidecar.grpc_api.convert_outcome import ATTEMPT_FROM_PB
from routing_sidecar.service.cache_execute import NO_OPTIONS, CacheOptions
from routing_sidecar.service.complete import CompleteEvent, CompleteRequest, Done, ExecutedAttempt
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb

MAX_MESSAGES = 1000
# Characters over every message; server.max_request_bytes bounds the wire before this.
MAX_CONTENT_CHARS = 8_000_000
MAX_STOP = 4  # what OpenAI accepts; Anthropic takes more, but one limit for every provider
MAX_STOP_CHARS = 256
MAX_TEMPERATURE = 2.0
MAX_CACHE_TTL_S = 366 * 86_400
ROLES = {r.value: r for r in Role}
FORMATS = {"": ResponseFormat.TEXT, **{f.value: f for f in ResponseFormat}}
ATTEMPT_TO_PB = {v: k for k, v in ATTEMPT_FROM_PB.items()}


def _messages(msg: pb.CompleteRequest) -> tuple[ChatMessage, ...]:
    if not msg.messages:
        raise InvalidArgument("messages", "at least one message is required")
    if len(msg.messages) > MAX_MESSAGES:
        raise InvalidArgument("messages", f"has {len(msg.messages)} entries; at most "
                              f"{MAX_MESSAGES} allowed")
    out = []
    total = 0
    for i, m in enumerate(msg.messages):
        role = ROLES.get(m.role)
        if role is None:
            raise InvalidArgument(f"messages[{i}].role",
                                  f"must be system, user or assistant (got {m.role[:32]!r})")
        total += len(m.content)
        if total > MAX_CONTENT_CHARS:
            raise InvalidArgument(f"messages[{i}].content", f"the messages add up to more "
                                  f"than {MAX_CONTENT_CHARS} characters")
        out.append(ChatMessage(role, m.content))
    if all(m.role is Role.SYSTEM for m in out):
        raise InvalidArgument("messages", "needs a user or assistant message, not only system")
    return tuple(out)


def _stop(msg: pb.CompleteRequest) -> tuple[str, ...]:
    if len(msg.stop) > MAX_STOP:
        raise InvalidArgument("stop", f"has {len(msg.stop)} entries; at most {MAX_STOP} allowed")
    for i, s in enumerate(msg.stop):
        if not s or len(s) > MAX_STOP_CHARS:
            raise InvalidArgument(f"stop[{i}]", f"must be 1..{MAX_STOP_CHARS} characters")
    return tuple(msg.stop)


def request_from_pb(msg: pb.CompleteRequest) -> CompleteRequest:
    """Validate a CompleteRequest and convert it; raises InvalidArgument naming the field."""
    try:
        task = task_from_pb(msg.route)
    except InvalidArgument as exc:
        raise InvalidArgument(f"route.{exc.field}",
                              exc.message.removeprefix(f"{exc.field}: ")) from None
    temperature = None
    if msg.HasField("temperature"):
        t = msg.temperature
        if not math.isfinite(t) or not 0.0 <= t <= MAX_TEMPERATURE:
            raise InvalidArgument("temperature", f"must be between 0 and {MAX_TEMPERATURE:g} "
                                  f"(got {t})")
        temperature = t
    fmt = FORMATS.get(msg.response_format)
    if fmt is None:
        raise InvalidArgument("response_format", "must be text or json_object (got "
                              f"{msg.response_format[:32]!r})")
    return CompleteRequest(task, _messages(msg), msg.stream, temperature, _stop(msg), fmt,
                           _cache(msg))


def _cache(msg: pb.CompleteRequest) -> CacheOptions:
    """The request's cache options; sending them at all opts the request in."""
    if not msg.HasField("cache"):
        return NO_OPTIONS
    c = msg.cache
    if not 0 <= c.ttl_s <= MAX_CACHE_TTL_S:
        raise InvalidArgument("cache.ttl_s", f"must be 0..{MAX_CACHE_TTL_S} seconds (got "
                              f"{c.ttl_s}); 0 means cache.ttl_s")
    return CacheOptions(no_cache=c.no_cache, no_store=c.no_store, ttl_s=float(c.ttl_s),
                        namespace=namespace("cache.namespace", c.namespace), given=True)


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(max(0.0, seconds) * 1e9))
    return d


def attempt_to_pb(a: ExecutedAttempt) -> pb.Attempt:
    """One executed attempt as the contract's Attempt."""
    msg = pb.Attempt(
        model=a.model, provider=a.provider, status=ATTEMPT_TO_PB[a.status],
        error_type=a.error_type, started_at=timestamp(a.started_at),
        duration=_duration(a.duration_s), input_tokens=a.input_tokens,
        output_tokens=a.output_tokens, cost_micros=a.cost_micros, index=a.index,
        hedged=a.hedged, off_plan=a.off_plan,
    )
    if a.retry_after_s is not None:
        msg.retry_after.CopyFrom(_duration(a.retry_after_s))
    return msg


def done_to_pb(d: Done) -> pb.CompleteDone:
    """The closing event."""
    return pb.CompleteDone(
        decision_id=d.decision_id, success=d.success, model=d.model, provider=d.provider,
        text=d.text, finish_reason=d.finish_reason, input_tokens=d.input_tokens,
        output_tokens=d.output_tokens, cost_micros=d.cost_micros,
        attempts=[attempt_to_pb(a) for a in d.attempts], cache_hit=d.cache_hit, error=d.error,
    )


def event_to_pb(event: CompleteEvent) -> pb.CompleteEvent:
    """One domain event of a Complete as its wire form."""
    if isinstance(event, TextDelta):
        return pb.CompleteEvent(delta=pb.TextDelta(text=event.text))
    if isinstance(event, ExecutedAttempt):
        return pb.CompleteEvent(attempt=attempt_to_pb(event))
    if isinstance(event, domain.Decision):
        # A hit's text comes as deltas and in done; cached_value is decision mode's.
        return pb.CompleteEvent(decision=decision_to_pb(event, with_cached_value=False))
    return pb.CompleteEvent(done=done_to_pb(event))
