"""The walk over one decision's plan: the chosen model, then its fallbacks, attempt by attempt.

A failure is classified by its adapter (ProviderError.status). Transient ones are retried on
the same model as `core/retry.py` plans it (exponential backoff, full jitter, at least the
provider's Retry-After, within the caller's deadline); permanent ones move to the next model at
once. A failure before the first token is invisible to the caller; after text was streamed,
the walk ends with that error unless the policy resumes on the next model with the partial
answer as an assistant prefix. With `hedge_after_ms`, a chosen model silent for that long gets
the first fallback started beside it; whichever yields a token first goes on, the other is
cancelled. Before each attempt on a model other than the chosen one, its breaker and budgets
are checked again and its estimate is reserved (released when the walk ends).

Whatever ends the walk (an answer, the last failure, the deadline, the caller going away), the
attempts made are settled through OutcomeService.record in a task of its own, so a cancelled
caller cannot interrupt the charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, replace

from routing_sidecar import domain
from routing_sidecar.calls import (
    CallParams,
    ProviderCall,
    StreamEnd,
    StreamEvent,
    TextDelta,
)
from routing_sidecar.core import retry
from routing_sidecar.core.candidates import first_block
from routing_sidecar.errors import BudgetUnavailable, ProviderError, StorageError
from routing_sidecar.ports import ProviderClient
from routing_sidecar.service.budgets import log_alerts
from routing_sidecar.service.complete import (
    CompleteEvent,
    CompleteRequest,
    CompleteService,
    Done,
    ExecutedAttempt,
    Execution,
    estimate_tokens,
)
from routing_sidecar.service.outcomes import OutcomeAck, plan_of, trusted
from routing_sidecar.service.routing import Decided, RoutingState

log = logging.getLogger(__name__)

CANCELLED = domain.AttemptStatus.CANCELLED
# Failures after which the request reached the provider and its input was (probably) billed,
# although the provider never said how much: charged at the estimated input tokens.
_BILLED_UNREPORTED = frozenset({domain.AttemptStatus.TIMEOUT, CANCELLED})
DRAIN_AFTER_END_S = 0.5
_NOT_SENT = frozenset({"connect_timeout", "pool_timeout", "connect_error", "no_credentials"})


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


def _deadline_error(provider: str) -> ProviderError:
    return ProviderError(f"{provider}: the caller's deadline is reached", status=CANCELLED,
                         error_type="deadline_exceeded")


def _cancelled(provider: str, why: str) -> ProviderError:
    return ProviderError(f"{provider}: {why}", status=CANCELLED, error_type="cancelled")


async def _first(gen: AsyncIterator[StreamEvent]) -> StreamEvent | None:
    try:
        return await anext(gen)
    except StopAsyncIteration:
        return None


class Walk:
    """One Complete after its decision: the attempts, and their settlement."""

    def __init__(self, service: CompleteService, execution: Execution, state: RoutingState,
                 request: CompleteRequest, decided: Decided, deadline: float | None) -> None:
        self._svc = service
        self._request = request
        self._decided = decided
        self._deadline = deadline
        self._loop = asyncio.get_running_loop()
        sel = decided.decision.selection
        self._policy = state.catalog.policies[sel.policy]
        # The labels as the decision admitted them (scope labels folded): what it reserved on.
        self._labels: dict[str, str] = json.loads(decided.record.labels_json)
        self._plan = self._steps(state, execution, sel)
        self._params = self._call_params(request, self._policy)
        self._tries = [0] * len(self._plan)
        self._live: dict[int, Live] = {}
        self._started = 0  # attempts started: the next one's index
        self._ready: list[ExecutedAttempt] = []  # finished, not yet yielded
        self._attempts: list[ExecutedAttempt] = []
        self._reserved: list[str] = []
        self._skipped: list[str] = []
        self._prefix = ""  # text already delivered, continued by a resumed attempt
        self._answer: tuple[Live, StreamEnd] | None = None
        self._last_error: ProviderError | None = None
        self._skip_retryable = True

    # -- setup -----------------------------------------------------------------------------

    @staticmethod
    def _steps(state: RoutingState, execution: Execution, sel: domain.Selection
               ) -> tuple[Step, ...]:
        if sel.chosen is None or sel.status is not domain.DecisionStatus.ROUTED:
            return ()
        named = [(sel.chosen.model, sel.chosen.estimated_cost_micros)]
        named += [(f.model, f.estimated_cost_micros) for f in sel.fallbacks]
        steps = []
        for i, (name, estimate) in enumerate(named):
            spec = state.catalog.models[name]
            steps.append(Step(i, spec, estimate, execution.settings.upstream_model(name),
                              execution.providers.get(spec.provider)))
        return tuple(steps)

    @staticmethod
    def _call_params(request: CompleteRequest, policy: domain.Policy) -> CallParams:
        task = request.task
        max_out = task.max_output_tokens or policy.max_output_tokens
        temperature = request.temperature if request.temperature is not None else (
            policy.temperature)
        return CallParams(temperature, request.stop, max_out, request.response_format)

    # -- the events ------------------------------------------------------------------------

    async def run(self, commit: Awaitable[None]) -> AsyncGenerator[CompleteEvent, None]:
        """The decision, each attempt's deltas and end, then Done; settles whatever happens.

        The first attempt is sent while the decision's audit row commits (`commit`), so the
        commit's latency hides behind the provider's first token; nothing is yielded before
        the decision is durable, and a failed commit cancels that attempt at once.
        """
        if self._plan and not self._out_of_time():
            first = self._start(self._plan[0])
            first.task = asyncio.ensure_future(_first(first.gen))
        committing = asyncio.ensure_future(commit)
        try:
            await asyncio.shield(committing)
        except BaseException:
            await asyncio.wait({committing})  # the writer commits a job whose caller left
            if committing.cancelled() or committing.exception() is not None:
                for live in list(self._live.values()):  # not charged: no decision exists
                    await self._stop_task(live)
                    self._live.pop(live.index, None)
                raise
            await self._stop_all("the caller went away")  # decided, then cancelled
            await asyncio.shield(self._svc.settle_later(self._settle()))
            raise
        try:
            yield self._decided.decision
            if not self._plan:
                yield self._refused()
                return
            async with contextlib.aclosing(self._walk()) as steps:
                async for event in steps:
                    yield event
        except BaseException:
            # Cancelled, deadline, the caller closed us, or a bug: stop every upstream request
            # now, then charge and record what they consumed before going on.
            await self._stop_all("the caller went away")
            await asyncio.shield(self._svc.settle_later(self._settle()))
            raise
        ack = await asyncio.shield(self._svc.settle_later(self._settle()))
        yield self._done(ack)

    def _refused(self) -> Done:
        sel = self._decided.decision.selection
        return Done(self._decided.decision.decision_id, False, finish_reason="error",
                    error=f"{sel.status.value} ({sel.reason_code.value}): {sel.reason}")

    async def _walk(self) -> AsyncGenerator[CompleteEvent, None]:
        pos = 0
        hedge_s = self._hedge_after()
        while pos < len(self._plan):
            if self._out_of_time() and not self._live:  # no request is sent to be cut at once
                self._skipped.append("the caller's deadline left no time for another attempt")
                return
            step = self._plan[pos]
            if pos > 0 and self._tries[pos] == 0 and not await self._admit(step):
                pos += 1
                continue
            self._tries[pos] += 1
            started = self._live.get(0) if self._started == 1 else None  # sent with the commit
            live = started if started is not None else self._start(step)
            first: StreamEvent | ProviderError | None = None
            if hedge_s is not None:
                live, first = await self._race(live, self._plan[1], hedge_s)
                hedge_s = None  # only the first attempt is hedged
            elif live.task is not None:
                first = await self._await_first(live)
            for ready in self._take_ready():
                yield ready
            outcome: StreamEnd | ProviderError
            try:
                while True:
                    event = first if first is not None else await self._next(live)
                    first = None
                    if isinstance(event, TextDelta):
                        live.texts.append(event.text)
                        if self._request.stream:
                            yield event
                        continue
                    outcome = event
                    break
            except ProviderError as exc:
                outcome = exc
            attempt = self._finish(live, outcome)
            await self._close(live, drain=isinstance(outcome, StreamEnd))
            yield attempt
            if isinstance(outcome, StreamEnd):
                self._answer = (live, outcome)
                return
            nxt = await self._after_failure(live, outcome)
            if nxt is None:
                return
            pos = nxt

    async def _after_failure(self, live: Live, exc: ProviderError) -> int | None:
        """The plan position to go on with after a failed attempt, or None to stop."""
        if exc.status is CANCELLED:
            return None
        self._last_error = exc
        pos = live.step.position
        if live.tokens and self._request.stream:
            # The caller has part of the answer: only a resume may carry on, on the next model.
            if self._policy.resume_on_stream_failure and exc.error_type != "content_refused":
                self._prefix += "".join(live.texts)
                return pos + 1
            return None
        step = retry.plan(self._policy.retry, self._tries[pos], exc.status, self._svc.rng,
                          retry_after_s=exc.retry_after_s, time_left_s=self._time_left())
        if step.action is retry.Action.NEXT_MODEL:
            log.info("falling back", extra={"model": live.step.spec.name, "why": step.reason})
            return pos + 1
        log.info("retrying", extra={"model": live.step.spec.name, "delay_s": step.delay_s,
                                    "why": step.reason})
        await self._svc.sleep(step.delay_s)
        return pos

    # -- one attempt -----------------------------------------------------------------------

    def _start(self, step: Step, hedged: bool = False) -> Live:
        call = ProviderCall(step.spec.name, step.upstream, self._request.messages, self._params,
                            self._request.stream, self._prefix)
        if step.client is None:  # unreachable: the decision took such models out
            raise ProviderError(f"{step.spec.provider}: no client",
                                status=domain.AttemptStatus.PERMANENT_ERROR,
                                error_type="no_credentials")
        index = self._started
        self._started += 1
        live = Live(step, index, step.client.stream(call), self._svc.clock.now(),
                    self._svc.clock.monotonic(), hedged)
        self._live[index] = live
        return live

    async def _next(self, live: Live) -> StreamEvent:
        """The attempt's next event under the caller's deadline; failures raise ProviderError."""
        try:
            if self._deadline is None:
                event = await anext(live.gen)
            else:
                async with asyncio.timeout_at(self._deadline):
                    event = await anext(live.gen)
        except StopAsyncIteration:
            raise ProviderError(f"{live.step.spec.provider}: the stream ended without its end",
                                status=domain.AttemptStatus.TRANSIENT_ERROR,
                                error_type="stream_error") from None
        except TimeoutError:
            raise _deadline_error(live.step.spec.provider) from None
        return event

    def _finish(self, live: Live, outcome: StreamEnd | ProviderError) -> ExecutedAttempt:
        """The attempt as it ended, with what it consumed and is charged."""
        self._live.pop(live.index, None)
        spec = live.step.spec
        if isinstance(outcome, StreamEnd):
            usage, status, error_type, error, retry_after = (
                outcome.usage, domain.AttemptStatus.SUCCESS, "", "", None)
        else:
            usage, status, error_type, error, retry_after = (
                outcome.usage, outcome.status, outcome.error_type, outcome.message,
                outcome.retry_after_s)
        ok = status is domain.AttemptStatus.SUCCESS
        # A failed stream may have delivered more text than its usage says (it never said).
        output = usage.output_tokens if ok else max(usage.output_tokens, live.tokens)
        billed = ok or output > 0 or (
            status in _BILLED_UNREPORTED and error_type not in _NOT_SENT)
        inp = usage.input_tokens if usage.input_tokens is not None else (
            self._input_estimate() if billed else 0)
        cost = usage.cost_micros if usage.cost_micros is not None else spec.cost_micros(inp, output)
        attempt = ExecutedAttempt(
            live.index, spec.name, spec.provider, status, live.started_at,
            max(0.0, self._svc.clock.monotonic() - live.t0), inp, output, cost, error_type,
            error, retry_after if status is domain.AttemptStatus.RATE_LIMITED else None,
            live.hedged)
        self._attempts.append(attempt)
        return attempt

    async def _close(self, live: Live, *, drain: bool) -> None:
        """Close an attempt's stream; after its end, read what is left first (bounded).

        Reading a finished response to its end returns the connection to the pool instead
        of closing it; the wait is bounded so that a server slow to end costs nothing more.
        """
        try:
            if drain:
                async with asyncio.timeout(DRAIN_AFTER_END_S):
                    async for _ in live.gen:
                        pass
        except (TimeoutError, ProviderError):
            pass
        finally:
            await live.gen.aclose()

    async def _stop(self, live: Live, why: ProviderError) -> ExecutedAttempt:
        """Cancel an attempt in flight: its upstream request is closed before this returns."""
        if live.task is not None and not live.task.done():
            live.task.cancel()
            await asyncio.gather(live.task, return_exceptions=True)
        elif live.task is not None and not live.task.cancelled() and live.task.exception() is None:
            first = live.task.result()  # it had produced an event nobody consumed
            if isinstance(first, TextDelta):
                live.texts.append(first.text)
        await live.gen.aclose()
        return self._finish(live, why)

    async def _stop_all(self, why: str) -> None:
        for live in list(self._live.values()):
            try:
                await self._stop(live, _cancelled(live.step.spec.provider, why))
            except Exception:  # closing must go on for the others
                log.exception("closing an upstream request failed")

    def _take_ready(self) -> Iterable[ExecutedAttempt]:
        ready, self._ready = self._ready, []
        return ready

    # -- hedging ---------------------------------------------------------------------------

    def _hedge_after(self) -> float | None:
        ms = self._policy.hedge_after_ms
        return ms / 1000.0 if ms is not None and len(self._plan) > 1 else None

    async def _await_first(self, live: Live) -> StreamEvent | ProviderError:
        """The first event of an attempt started as a task, under the caller's deadline."""
        assert live.task is not None
        done, _ = await asyncio.wait({live.task}, timeout=self._bounded(None))
        if not done:
            await self._stop_task(live)
            return _deadline_error(live.step.spec.provider)
        outcome = self._task_outcome(live)
        live.task = None
        return outcome

    async def _race(self, a: Live, hedge: Step, after_s: float
                    ) -> tuple[Live, StreamEvent | ProviderError | None]:
        """The chosen model's first attempt, and the first fallback beside it if it is slow.

        Returns the attempt that goes on and its first event (or failure); the attempts that
        ended meanwhile wait in `_ready`.
        """
        if a.task is None:
            a.task = asyncio.ensure_future(_first(a.gen))
        done, _ = await asyncio.wait({a.task}, timeout=self._bounded(after_s))
        left = self._time_left()
        if not done and (left is None or left > 0) and await self._admit(hedge):
            self._tries[hedge.position] += 1
            b = self._start(hedge, hedged=True)
            b.task = asyncio.ensure_future(_first(b.gen))
            racing = [a, b]
        else:
            racing = [a]
        while True:
            tasks = {r.task for r in racing if r.task is not None}
            done, _ = await asyncio.wait(tasks, timeout=self._bounded(None),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:  # the deadline
                for other in racing[1:]:
                    self._ready.append(await self._stop(other, _deadline_error(
                        other.step.spec.provider)))
                await self._stop_task(racing[0])
                return racing[0], _deadline_error(racing[0].step.spec.provider)
            for live in list(racing):  # the chosen model first, so it wins a tie
                if live.task not in done:
                    continue
                outcome = self._task_outcome(live)
                if isinstance(outcome, ProviderError) and len(racing) > 1:
                    racing.remove(live)
                    self._ready.append(self._finish(live, outcome))
                    self._last_error = outcome
                    continue
                for other in racing:
                    if other is not live:
                        self._ready.append(await self._stop(other, _cancelled(
                            other.step.spec.provider, "a faster attempt answered first")))
                live.task = None
                return live, outcome

    @staticmethod
    def _task_outcome(live: Live) -> StreamEvent | ProviderError:
        assert live.task is not None
        exc = live.task.exception()
        if exc is None:
            event = live.task.result()
            if event is None:
                return ProviderError(f"{live.step.spec.provider}: the stream ended without "
                                     "its end", status=domain.AttemptStatus.TRANSIENT_ERROR,
                                     error_type="stream_error")
            return event
        if isinstance(exc, ProviderError):
            return exc
        raise exc

    async def _stop_task(self, live: Live) -> None:
        if live.task is not None and not live.task.done():
            live.task.cancel()
            await asyncio.gather(live.task, return_exceptions=True)
        live.task = None
        await live.gen.aclose()

    # -- budgets and breakers between attempts ---------------------------------------------

    async def _admit(self, step: Step) -> bool:
        """True when a model other than the chosen one may run now; its estimate is reserved."""
        svc = self._svc
        now = svc.clock.now()
        learner = svc.routing.learner
        why = learner.health.blocked(step.spec, now)
        if why is None and (step.client is None or not step.client.has_credentials()):
            why = f"no credentials for provider {step.spec.provider!r}"
        if why is None:
            why = await self._reserve(step, now)
        if why is not None:
            self._skipped.append(f"{step.spec.name}: {why}")
            self._skip_retryable = self._skip_retryable and why.startswith("circuit")
            log.info("fallback skipped", extra={"model": step.spec.name, "why": why})
            return False
        learner.health.on_routed(step.spec, now)  # it claims a half-open probe, if any
        return True

    async def _reserve(self, step: Step, now: float) -> str | None:
        """Reserve the step's estimate on its budgets under an id of its own; why not, or None."""
        record = self._decided.record
        ledger = self._svc.routing.ledger
        labels = self._labels
        if ledger.unavailable is not None:
            return ledger.unavailable
        lines = ledger.lines(labels, step.spec, record.policy, record.task_id, now)
        block = first_block(lines, step.estimate_micros)
        if block is not None:
            return block.reason(step.estimate_micros)
        rid = f"{record.decision_id}:{step.position}"
        ttl = self._svc.routing.state.settings.ledger.reservation_ttl_s
        try:
            block, change = await ledger.reserve(rid, labels, step.spec, record.policy,
                                                 record.task_id, step.estimate_micros, now,
                                                 now + ttl)
        except BudgetUnavailable as exc:
            return exc.message
        if block is not None:
            return block.reason(step.estimate_micros)
        try:
            await self._svc.ledger_store.record_ledger(change.entries)
        except StorageError:
            await ledger.revert(change)
            return "the store could not record its reservation"
        self._reserved.append(rid)
        log_alerts(change.alerts, self._svc.routing.alert_hook)
        return None

    async def _release(self) -> None:
        ledger = self._svc.routing.ledger
        now = self._svc.clock.now()
        for rid in self._reserved:
            released = False
            try:
                change = await ledger.release(rid, now)
                try:
                    await self._svc.ledger_store.record_ledger(change.entries)
                    released = True
                except StorageError:
                    await ledger.revert(change)  # memory keeps what disk has
            except BudgetUnavailable:
                pass
            if not released:
                log.error("a fallback reservation could not be released; it expires at its "
                          "TTL", extra={"reservation": rid})
        self._reserved = []

    # -- the end ---------------------------------------------------------------------------

    async def _settle(self) -> OutcomeAck | None:
        """Charge and record every attempt (health included), then release extra holds."""
        svc = self._svc
        record = self._decided.record
        plan = plan_of(record)
        catalog = {s.spec.name: s.spec for s in self._plan}
        checked = [trusted(a.to_attempt(), catalog[a.model], plan)
                   for a in sorted(self._attempts, key=lambda a: a.index)]
        ack: OutcomeAck | None = None
        try:
            ack = await svc.outcomes.record(record, checked, self._answer is not None,
                                            learn=False)
        except StorageError:
            log.error("the attempts of a Complete could not be recorded", exc_info=True)
        finally:
            await self._release()
        if ack is not None and svc.on_recorded is not None:
            svc.on_recorded(ack)
        return ack

    def _done(self, ack: OutcomeAck | None) -> Done:
        attempts = tuple(sorted(self._attempts, key=lambda a: a.index))
        cost = ack.actual_cost_micros if ack is not None else sum(a.cost_micros for a in attempts)
        base = Done(self._decided.decision.decision_id, False, attempts=attempts,
                    input_tokens=sum(a.input_tokens for a in attempts),
                    output_tokens=sum(a.output_tokens for a in attempts), cost_micros=cost)
        if self._answer is not None:
            live, end = self._answer
            text = "" if self._request.stream else "".join(live.texts)
            return replace(base, success=True, model=live.step.spec.name,
                           provider=live.step.spec.provider, text=text,
                           finish_reason=end.finish_reason.value)
        last = attempts[-1] if attempts else None
        failures = [a for a in attempts if a.status is not CANCELLED]
        retryable = self._skip_retryable and all(a.status in retry.RETRYABLE for a in failures)
        if last is not None and last.status is CANCELLED:
            reason = "cancelled"
        elif last is not None and last.error_type == "content_refused":
            reason = "content_filter"
        else:
            reason = "error"
        return replace(base, model=last.model if last else "",
                       provider=last.provider if last else "", finish_reason=reason,
                       error=self._error(last), retryable=retryable)

    def _error(self, last: ExecutedAttempt | None) -> str:
        parts = []
        if last is not None and last.error:
            parts.append(last.error)
        elif self._last_error is not None:
            parts.append(self._last_error.message)
        if self._skipped:
            parts.append("skipped " + "; ".join(self._skipped))
        return "; ".join(parts) or "no model could be called"

    # -- time ------------------------------------------------------------------------------

    def _out_of_time(self) -> bool:
        left = self._time_left()
        return left is not None and left <= 0

    def _time_left(self) -> float | None:
        return None if self._deadline is None else self._deadline - self._loop.time()

    def _bounded(self, wait_s: float | None) -> float | None:
        left = self._time_left()
        if left is None:
            return wait_s
        return max(0.0, left if wait_s is None else min(wait_s, left))

    def _input_estimate(self) -> int:
        # The task's estimate (the prompt's size when the caller gave none), plus any prefix.
        return self._request.task.estimated_input_tokens + estimate_tokens([self._prefix])
