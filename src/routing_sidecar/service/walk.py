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
from collections.abc import AsyncGenerator, Awaitable, Iterable
from dataclasses import replace

from routing_sidecar import domain
from routing_sidecar.calls import (
    CallParams,
    ProviderCall,
    StreamEnd,
    StreamEvent,
    TextDelta,
)
from routing_sidecar.core import retry
from routing_sidecar.errors import ProviderError, StorageError
from routing_sidecar.service.attempt import (
    Live,
    Step,
    cancelled,
    charged,
    deadline_error,
    ended_early,
)
from routing_sidecar.service.complete import (
    CompleteEvent,
    CompleteRequest,
    CompleteService,
    Done,
    ExecutedAttempt,
    Execution,
    estimate_tokens,
)
from routing_sidecar.service.holds import FallbackHolds
from routing_sidecar.service.outcomes import OutcomeAck, plan_of, trusted
from routing_sidecar.service.routing import Decided, RoutingState

log = logging.getLogger(__name__)

CANCELLED = domain.AttemptStatus.CANCELLED


def call_params(request: CompleteRequest, policy: domain.Policy) -> CallParams:
    """What every attempt sends: the request's parameters, else the policy's."""
    task = request.task
    max_out = task.max_output_tokens or policy.max_output_tokens
    temperature = request.temperature if request.temperature is not None else (
        policy.temperature)
    return CallParams(temperature, request.stop, max_out, request.response_format)


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
        self._holds = FallbackHolds(service, decided.record, json.loads(decided.record.labels_json))
        self._plan = self._steps(state, execution, sel)
        self._params = call_params(request, self._policy)
        self._tries = [0] * len(self._plan)
        self._live: dict[int, Live] = {}
        self._started = 0  # attempts started: the next one's index
        self._ready: list[ExecutedAttempt] = []  # finished, not yet yielded
        self._attempts: list[ExecutedAttempt] = []
        self._prefix = ""  # text already delivered, continued by a resumed attempt
        self._answer: tuple[Live, StreamEnd] | None = None
        self._last_error: ProviderError | None = None

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

    # -- the events ------------------------------------------------------------------------

    async def run(self, commit: Awaitable[None]) -> AsyncGenerator[CompleteEvent, None]:
        """The decision, each attempt's deltas and end, then Done; settles whatever happens.

        The first attempt is sent while the decision's audit row commits (`commit`), so the
        commit's latency hides behind the provider's first token; nothing is yielded before
        the decision is durable, and a failed commit cancels that attempt at once.
        """
        if self._plan and not self._out_of_time():
            self._start(self._plan[0]).start_first()
        committing = asyncio.ensure_future(commit)
        try:
            await asyncio.shield(committing)
        except BaseException:
            await asyncio.wait({committing})  # the writer commits a job whose caller left
            if committing.cancelled() or committing.exception() is not None:
                for live in list(self._live.values()):  # not charged: no decision exists
                    await live.stop_task()
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
                self._holds.note("the caller's deadline left no time for another attempt")
                return
            step = self._plan[pos]
            if pos > 0 and self._tries[pos] == 0 and not await self._holds.admit(step):
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
            await live.close(drain=isinstance(outcome, StreamEnd))
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
            raise ended_early(live.step.spec.provider) from None
        except TimeoutError:
            raise deadline_error(live.step.spec.provider) from None
        return event

    def _finish(self, live: Live, outcome: StreamEnd | ProviderError) -> ExecutedAttempt:
        """The attempt as it ended, with what it consumed and is charged."""
        self._live.pop(live.index, None)
        attempt = charged(live, outcome, self._input_estimate(), self._svc.clock.monotonic())
        self._attempts.append(attempt)
        return attempt

    async def _stop(self, live: Live, why: ProviderError) -> ExecutedAttempt:
        """Cancel an attempt in flight: its upstream request is closed before this returns."""
        await live.stop_task()
        return self._finish(live, why)

    async def _stop_all(self, why: str) -> None:
        for live in list(self._live.values()):
            try:
                await self._stop(live, cancelled(live.step.spec.provider, why))
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
            await live.stop_task()
            return deadline_error(live.step.spec.provider)
        outcome = live.task_outcome()
        live.task = None
        return outcome

    async def _race(self, a: Live, hedge: Step, after_s: float
                    ) -> tuple[Live, StreamEvent | ProviderError | None]:
        """The chosen model's first attempt, and the first fallback beside it if it is slow.

        Returns the attempt that goes on and its first event (or failure); the attempts that
        ended meanwhile wait in `_ready`.
        """
        first = a.task or a.start_first()
        done, _ = await asyncio.wait({first}, timeout=self._bounded(after_s))
        left = self._time_left()
        if not done and (left is None or left > 0) and await self._holds.admit(hedge):
            self._tries[hedge.position] += 1
            b = self._start(hedge, hedged=True)
            b.start_first()
            racing = [a, b]
        else:
            racing = [a]
        while True:
            tasks = {r.task for r in racing if r.task is not None}
            finished, _ = await asyncio.wait(tasks, timeout=self._bounded(None),
                                             return_when=asyncio.FIRST_COMPLETED)
            if not finished:  # the deadline
                for other in racing[1:]:
                    self._ready.append(await self._stop(other, deadline_error(
                        other.step.spec.provider)))
                await racing[0].stop_task()
                return racing[0], deadline_error(racing[0].step.spec.provider)
            for live in list(racing):  # the chosen model first, so it wins a tie
                if live.task not in finished:
                    continue
                outcome = live.task_outcome()
                if isinstance(outcome, ProviderError) and len(racing) > 1:
                    racing.remove(live)
                    self._ready.append(self._finish(live, outcome))
                    self._last_error = outcome
                    continue
                for other in racing:
                    if other is not live:
                        self._ready.append(await self._stop(other, cancelled(
                            other.step.spec.provider, "a faster attempt answered first")))
                live.task = None
                return live, outcome

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
            await self._holds.release()
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
        retryable = self._holds.retryable and all(a.status in retry.RETRYABLE for a in failures)
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
        if self._holds.skipped:
            parts.append("skipped " + "; ".join(self._holds.skipped))
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
