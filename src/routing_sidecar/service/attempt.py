"""One attempt of a walk: its plan step, its stream in flight, and what it is charged.

`Live` is an attempt whose provider stream is open (and, while its first event is awaited
beside another, the task awaiting it); `charged` turns how it ended into the provenance entry
with the tokens it consumed and its cost. Closing helpers make sure the upstream request is
closed before they return.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from routing_sidecar import domain
from routing_sidecar.calls import StreamEnd, StreamEvent, TextDelta
from routing_sidecar.errors import ProviderError
from routing_sidecar.ports import ProviderClient
from routing_sidecar.service.complete import ExecutedAttempt

CANCELLED = domain.AttemptStatus.CANCELLED
SUCCESS = domain.AttemptStatus.SUCCESS
# Failures after which the request reached the provider and its input was (probably) billed,
# although the provider never said how much: charged at the estimated input tokens.
_BILLED_UNREPORTED = frozenset({domain.AttemptStatus.TIMEOUT, CANCELLED})
_NOT_SENT = frozenset({"connect_timeout", "pool_timeout", "connect_error", "no_credentials"})
DRAIN_AFTER_END_S = 0.5


@dataclass(frozen=True, slots=True)
class Step:
    """One model of the plan: position 0 is the chosen model, the rest its fallbacks."""

    position: int
    spec: domain.ModelSpec
    estimate_micros: int
    upstream: str
    client: ProviderClient | None


class Live:
    """An attempt in flight: its stream, the task awaiting its first event, what it consumed."""

    __slots__ = ("gen", "hedged", "index", "started_at", "step", "t0", "task", "texts")

    def __init__(self, step: Step, index: int, gen: AsyncGenerator[StreamEvent, None],
                 started_at: float, t0: float, hedged: bool) -> None:
        self.step, self.index, self.gen, self.hedged = step, index, gen, hedged
        self.started_at, self.t0 = started_at, t0
        self.task: asyncio.Task[StreamEvent | None] | None = None
        self.texts: list[str] = []  # one entry per text delta: the output tokens received

    @property
    def tokens(self) -> int:
        """Text deltas received so far (the adapters' count of output tokens)."""
        return len(self.texts)

    def start_first(self) -> asyncio.Task[StreamEvent | None]:
        """Await the first event in a task of its own (raced, or beside the commit)."""
        self.task = asyncio.ensure_future(first_event(self.gen))
        return self.task

    def task_outcome(self) -> StreamEvent | ProviderError:
        """The first event the finished task got, or the failure it met."""
        assert self.task is not None
        exc = self.task.exception()
        if exc is None:
            event = self.task.result()
            return ended_early(self.step.spec.provider) if event is None else event
        if isinstance(exc, ProviderError):
            return exc
        raise exc

    async def stop_task(self) -> None:
        """Cancel the first-event task if it still runs, then close the stream."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        elif self.task is not None and not self.task.cancelled() and (
                self.task.exception() is None):
            first = self.task.result()  # it had produced an event nobody consumed
            if isinstance(first, TextDelta):
                self.texts.append(first.text)
        self.task = None
        await self.gen.aclose()

    async def close(self, *, drain: bool) -> None:
        """Close the stream; after its end, read what is left first (bounded).

        Reading a finished response to its end returns the connection to the pool instead
        of closing it; the wait is bounded so that a server slow to end costs nothing more.
        """
        try:
            if drain:
                async with asyncio.timeout(DRAIN_AFTER_END_S):
                    async for _ in self.gen:
                        pass
        except (TimeoutError, ProviderError):
            pass
        finally:
            await self.gen.aclose()


def deadline_error(provider: str) -> ProviderError:
    """The attempt the caller's deadline cut."""
    return ProviderError(f"{provider}: the caller's deadline is reached", status=CANCELLED,
                         error_type="deadline_exceeded")


def cancelled(provider: str, why: str) -> ProviderError:
    """An attempt stopped for `why` (the caller left, a faster attempt answered)."""
    return ProviderError(f"{provider}: {why}", status=CANCELLED, error_type="cancelled")


def ended_early(provider: str) -> ProviderError:
    """A stream that ended without its end event."""
    return ProviderError(f"{provider}: the stream ended without its end",
                         status=domain.AttemptStatus.TRANSIENT_ERROR, error_type="stream_error")


async def first_event(gen: AsyncIterator[StreamEvent]) -> StreamEvent | None:
    """The stream's first event, or None when it ends at once."""
    try:
        return await anext(gen)
    except StopAsyncIteration:
        return None


def charged(live: Live, outcome: StreamEnd | ProviderError, input_estimate: int,
            now_mono: float) -> ExecutedAttempt:
    """The attempt as it ended: the tokens it consumed and what it is charged for them.

    The provider's usage when it reported one; else, for a request it accepted, the estimated
    input and every output token received; the provider's own cost, else tokens x catalog.
    """
    spec = live.step.spec
    if isinstance(outcome, StreamEnd):
        usage, status, error_type, error, retry_after = (outcome.usage, SUCCESS, "", "", None)
    else:
        usage, status, error_type, error, retry_after = (
            outcome.usage, outcome.status, outcome.error_type, outcome.message,
            outcome.retry_after_s)
    ok = status is SUCCESS
    # A failed stream may have delivered more text than its usage says (it never said).
    output = usage.output_tokens if ok else max(usage.output_tokens, live.tokens)
    billed = ok or output > 0 or (status in _BILLED_UNREPORTED and error_type not in _NOT_SENT)
    inp = usage.input_tokens if usage.input_tokens is not None else (
        input_estimate if billed else 0)
    cost = usage.cost_micros if usage.cost_micros is not None else spec.cost_micros(inp, output)
    return ExecutedAttempt(
        live.index, spec.name, spec.provider, status, live.started_at,
        max(0.0, now_mono - live.t0), inp, output, cost, error_type, error,
        retry_after if status is domain.AttemptStatus.RATE_LIMITED else None, live.hedged)
