"""Complete (execute mode): decide exactly as Route does, then make the call and walk the plan.

Transport-free: `CompleteService.complete` is an async generator of domain events, in order:
the `domain.Decision`, then per attempt its `calls.TextDelta` pieces (when streaming) and one
`ExecutedAttempt`, then one `Done`, always last. gRPC (grpc_api/convert_complete.py) and the
HTTP API turn them into their own messages. Iterate it inside `contextlib.aclosing`: closing it
early (the caller went away) closes the upstream request at once, and the attempts made so far
are still charged and recorded.

The walk itself (retries, fallbacks, hedging, resume, budgets between attempts) is
service/walk.py; this module owns the provider clients of the running config and swaps them
on reload without cutting a walk that is using the old ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from routing_sidecar import domain
from routing_sidecar.calls import (
    ChatMessage,
    ExecutionSettings,
    ResponseFormat,
    TextDelta,
)
from routing_sidecar.errors import InvalidArgument, ResourceExhausted
from routing_sidecar.ports import Clock, LedgerStore, ProviderClient
from routing_sidecar.service.cache_execute import NO_OPTIONS, CacheOptions, answer_cached
from routing_sidecar.service.outcomes import OutcomeAck, OutcomeService
from routing_sidecar.service.routing import NO_TRACE, RoutingService, TraceIds

log = logging.getLogger(__name__)

# The walk stops this far ahead of the caller's deadline, so that `done` still reaches it.
DEADLINE_MARGIN_S = 0.05
DRAIN_TIMEOUT_S = 10.0
MAX_BUFFERED = 1024  # events read ahead of a slow caller before the provider is left waiting
CHARS_PER_TOKEN = 4  # a rough token count of text no provider has counted yet


def estimate_tokens(texts: Sequence[str]) -> int:
    """About how many tokens the texts make, for a decision or a charge nobody measured."""
    return math.ceil(sum(len(t) for t in texts) / CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class CompleteRequest:
    """A task's metadata (decided as Route decides it) and the conversation to run it on."""

    task: domain.Task
    messages: tuple[ChatMessage, ...]
    stream: bool = False
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    response_format: ResponseFormat = ResponseFormat.TEXT
    cache: CacheOptions = NO_OPTIONS  # the request's say over the response cache


@dataclass(frozen=True, slots=True)
class ExecutedAttempt:
    """One call the sidecar made, as it ended: the attempt's place in the provenance."""

    index: int
    model: str
    provider: str
    status: domain.AttemptStatus
    started_at: float
    duration_s: float
    input_tokens: int
    output_tokens: int
    cost_micros: int  # what it is charged: the provider's own cost, else tokens x catalog
    error_type: str = ""
    error: str = ""  # the failure in words (never a key), "" on success
    retry_after_s: float | None = None
    hedged: bool = False  # started beside a slow attempt (hedging)
    off_plan: bool = False

    def to_attempt(self) -> domain.Attempt:
        """The attempt as the outcome path records it."""
        return domain.Attempt(
            self.model, self.provider, self.status, self.error_type, self.started_at,
            self.duration_s, self.input_tokens, self.output_tokens, self.cost_micros,
            self.retry_after_s)


@dataclass(frozen=True, slots=True)
class Done:
    """The last event of every Complete, success or not."""

    decision_id: str
    success: bool
    model: str = ""  # the model that answered (the last attempt's when none did)
    provider: str = ""
    text: str = ""  # the whole answer when the request did not stream
    finish_reason: str = ""  # stop | length | tool_calls | content_filter | error | cancelled
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0  # charged for every attempt together
    attempts: tuple[ExecutedAttempt, ...] = ()
    error: str = ""  # why the task failed, when it did
    retryable: bool = False  # failed, and every failure was transient: the same call may succeed
    cache_hit: bool = False


CompleteEvent = domain.Decision | TextDelta | ExecutedAttempt | Done


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None = None


def coalesce(events: Sequence[CompleteEvent]) -> list[CompleteEvent]:
    """Adjacent text deltas joined into one (the order of everything else kept).

    A cache hit's replayed pieces (`ReplayedDelta`) stay apart: they go out as they streamed.
    """
    out: list[CompleteEvent] = []
    for event in events:
        if type(event) is TextDelta and out and type(out[-1]) is TextDelta:
            out[-1] = TextDelta(out[-1].text + event.text)
        else:
            out.append(event)
    return out


async def ready_batches(events: AsyncGenerator[CompleteEvent, None], *,
                        max_buffered: int = MAX_BUFFERED) -> AsyncGenerator[
                            list[CompleteEvent], None]:
    """The events, in batches of what arrived while the consumer was busy writing the last.

    A task of its own reads `events` ahead of the consumer (at most `max_buffered` events
    ahead), so a provider faster than the caller's connection is forwarded in fewer, larger
    deltas (`coalesce`) instead of one message per token, and a slow one costs nothing: each
    batch goes out as soon as the consumer is free. Closing this generator cancels the
    reader, which closes `events` (and the upstream request); errors reach the consumer.
    """
    queue: asyncio.Queue[CompleteEvent | _End] = asyncio.Queue(max_buffered)

    async def pump() -> None:
        end = _End()
        first_text = True
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    idle = queue.empty()  # the consumer may be waiting for this one
                    await queue.put(event)
                    if idle and first_text and isinstance(event, TextDelta):
                        # Let it take the first token now rather than after everything the
                        # provider has already sent; later ones join while it writes.
                        first_text = False
                        await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            end = _End(exc)
        await queue.put(end)

    reader = asyncio.ensure_future(pump())
    try:
        while True:
            batch: list[CompleteEvent] = []
            item = await queue.get()
            while not isinstance(item, _End):
                batch.append(item)
                if queue.empty():
                    break
                item = queue.get_nowait()
            if batch:
                yield coalesce(batch)
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
    finally:
        if not reader.done():
            reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


class ProviderSet(Protocol):
    """The provider clients of one config (providers/registry.py implements it)."""

    def get(self, provider: str) -> ProviderClient | None:
        """The client of a provider, or None when it has no `providers` entry."""
        ...

    def has_credentials(self, provider: str) -> bool:
        """True when the provider has a client able to authenticate."""
        ...

    async def aclose(self) -> None:
        """Close every client's connection pool."""
        ...


class Execution:
    """One config's provider clients and upstream ids, closed once retired and unused."""

    def __init__(self, providers: ProviderSet, settings: ExecutionSettings) -> None:
        self.providers = providers
        self.settings = settings
        self.active = 0
        self.retired = False

    def uncallable(self, model: domain.ModelSpec) -> str | None:
        """Why the sidecar cannot call the model itself, else None (listed as no_credentials)."""
        if self.providers.get(model.provider) is None:
            return f"provider {model.provider!r} has no entry under providers"
        if not self.providers.has_credentials(model.provider):
            return f"no credentials for provider {model.provider!r}"
        return None


RecordedHook = Callable[[OutcomeAck], None]


class CompleteService:
    """Decides, then runs the decision's plan against the providers and records every attempt."""

    def __init__(
        self,
        routing: RoutingService,
        outcomes: OutcomeService,
        ledger_store: LedgerStore,
        clock: Clock,
        execution: Execution,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.routing = routing
        self.outcomes = outcomes
        self.ledger_store = ledger_store
        self.clock = clock
        self.rng = rng or random.Random()  # backoff jitter; the core takes randomness here
        self.sleep = sleep
        self.on_recorded: RecordedHook | None = None  # set by the app: spans and metrics
        self._execution = execution
        self._settling: set[asyncio.Task[OutcomeAck | None]] = set()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def execution(self) -> Execution:
        """The provider clients new walks use."""
        return self._execution

    def use(self, execution: Execution) -> None:
        """Swap in a reloaded config's clients; the old ones close when their last walk ends."""
        old, self._execution = self._execution, execution
        old.retired = True
        self._close_if_idle(old)

    async def complete(self, request: CompleteRequest, trace: TraceIds = NO_TRACE,
                       timeout_s: float | None = None) -> AsyncGenerator[CompleteEvent, None]:
        """Decide, commit the decision (while the first attempt starts), then walk the plan.

        `timeout_s` is what is left of the caller's deadline: it bounds backoff waits and
        attempts. Raises InvalidArgument (naming the field, nothing written) before any event.
        With the response cache on, a request it holds the answer to is answered from it, and
        identical requests in flight wait for one call (service/cache_execute.py).
        """
        if request.task.dry_run:
            raise InvalidArgument("route.dry_run", "execute mode makes the call and is charged "
                                  "for it; use Route for a dry run")
        if request.task.estimated_input_tokens == 0:
            # The prompt is at hand: its size makes the estimate, the budget and context checks.
            guess = estimate_tokens([m.content for m in request.messages])
            request = replace(request, task=replace(request.task, estimated_input_tokens=guess))
        run = (self.walk(request, trace, timeout_s) if self.routing.cache is None
               else answer_cached(self, self.routing.cache, request, trace, timeout_s))
        async with contextlib.aclosing(run) as events:
            async for event in events:
                yield event

    async def walk(self, request: CompleteRequest, trace: TraceIds = NO_TRACE,
                   timeout_s: float | None = None) -> AsyncGenerator[CompleteEvent, None]:
        """Decide, commit and walk the plan: `complete` without the response cache."""
        # Imported here: walk.py imports this module's types.
        from routing_sidecar.service.walk import Walk  # noqa: PLC0415

        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s - DEADLINE_MARGIN_S
        execution = self._execution
        execution.active += 1
        try:
            state = self.routing.state
            try:
                decided = await self.routing.decide(request.task, trace, execution.uncallable)
            except (InvalidArgument, ResourceExhausted) as exc:  # fields of the RouteRequest
                raise type(exc)(f"route.{exc.field}",
                                exc.message.removeprefix(f"{exc.field}: ")) from None
            walk = Walk(self, execution, state, request, decided, deadline)
            async with contextlib.aclosing(walk.run(self.routing.commit(decided))) as events:
                async for event in events:
                    yield event
        finally:
            execution.active -= 1
            self._close_if_idle(execution)

    def settle_later(self, settle: Awaitable[OutcomeAck | None]) -> asyncio.Task[OutcomeAck | None]:
        """Run a walk's settlement as its own task, so a cancelled caller cannot interrupt it."""
        task = asyncio.ensure_future(settle)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return task

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait for settlements in flight (before the store closes) and close idle clients."""
        pending = set(self._settling) | set(self._closing)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            if late:
                log.error("walks still settling at shutdown", extra={"walks": len(late)})

    async def aclose(self) -> None:
        """Drain, then close the current clients."""
        await self.drain()
        await self._execution.providers.aclose()

    def _close_if_idle(self, execution: Execution) -> None:
        if execution.retired and execution.active == 0:
            execution.active = -1  # closed once only
            task = asyncio.ensure_future(execution.providers.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
