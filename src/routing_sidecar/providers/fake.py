"""`kind: fake`: an in-process provider scripted by the model name, for tests and demos.

It follows the grammar of fake_script.py exactly as the bundled fake server does (same text,
same token counts, same failures and their classification), without any server: delays are
`asyncio.sleep`, a failure status becomes the ProviderError its HTTP twin would, a cut stream
raises a transient `stream_error` after its tokens. The first-token and total deadlines of the
provider's settings apply as to every adapter.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable

from routing_sidecar.calls import (
    FinishReason,
    ProviderCall,
    ProviderSettings,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)
from routing_sidecar.domain import AttemptStatus
from routing_sidecar.errors import ProviderError
from routing_sidecar.providers import fake_script
from routing_sidecar.providers.base import (
    AttemptState,
    error_object,
    failure_from_error,
    stream_cut,
    timed_events,
)

Sleep = Callable[[float], Awaitable[None]]


class FakeProvider:
    """A scripted provider living in the sidecar's own process."""

    def __init__(self, settings: ProviderSettings, sleep: Sleep = asyncio.sleep) -> None:
        self._settings = settings
        self._sleep = sleep
        self._seen: Counter[str] = Counter()  # requests per upstream model, for flaky-N

    def __repr__(self) -> str:
        return f"FakeProvider(name={self.name!r})"

    @property
    def name(self) -> str:
        """The provider's name in the config."""
        return self._settings.name

    def has_credentials(self) -> bool:
        """Always: the fake needs no key."""
        return True

    def stream(self, call: ProviderCall) -> AsyncGenerator[StreamEvent, None]:
        """Play the script of `call.upstream_model`."""
        state = AttemptState()
        return timed_events(self._play(call, state), state, self._settings,
                            streamed=call.stream)

    async def aclose(self) -> None:
        """Nothing to close."""

    def requests_seen(self, upstream_model: str) -> int:
        """How many calls this client received for an upstream model."""
        return self._seen[upstream_model]

    async def _play(self, call: ProviderCall, state: AttemptState
                    ) -> AsyncGenerator[StreamEvent, None]:
        try:
            script = fake_script.parse_model(call.upstream_model)
        except fake_script.ScriptError as exc:
            raise ProviderError(f"{self.name}: {exc}", status=AttemptStatus.PERMANENT_ERROR,
                                error_type="http_400", http_status=400) from None
        self._seen[call.upstream_model] += 1
        status = script.failure_for(self._seen[call.upstream_model])
        if status is not None:
            raise self._failure(script, status)
        contents = [m.content for m in call.messages]
        if call.assistant_prefix:
            contents.append(call.assistant_prefix)
        tokens, truncated = fake_script.answer_tokens(
            fake_script.prompt_of(contents), script, call.params.max_output_tokens)
        state.input_tokens = fake_script.count_tokens(contents)
        await self._sleep(script.first_token_delay_s)
        stop_at = script.tokens_before_end(len(tokens))
        if not call.stream:
            if script.cut_after is not None:
                raise stream_cut(self.name, "the connection dropped before the response")
            if script.error_event:
                raise self._stream_error()
            yield TextDelta("".join(tokens))
        else:
            for i, token in enumerate(tokens[:stop_at]):
                if i and script.tokens_per_s:
                    await self._sleep(1.0 / script.tokens_per_s)
                yield TextDelta(token)
            if script.error_event:
                raise self._stream_error()
            if script.cut_after is not None:
                raise stream_cut(self.name, "the stream ended before the answer did")
        finish, raw = (FinishReason.LENGTH, "length") if truncated else (FinishReason.STOP, "stop")
        yield StreamEnd(finish, Usage(state.input_tokens, len(tokens), script.cost_micros,
                                      reported=True), raw)

    def _failure(self, script: fake_script.Script, status: int) -> ProviderError:
        error_type, code = fake_script.openai_error(status)
        wait = (script.retry_after_ms / 1000 if script.retry_after_ms is not None
                else script.retry_after_s)
        # Built through error_object() so the code is picked exactly as from an HTTP body.
        err = error_object({"error": {"type": error_type, "code": code,
                                      "message": f"fake failure {status}"}})
        assert err is not None
        return failure_from_error(self.name, err, None, http_status=status,
                                  retry_after_s=None if wait is None else float(wait))

    def _stream_error(self) -> ProviderError:
        error_type, code = fake_script.STREAM_ERROR_OPENAI
        err = error_object({"error": {"type": error_type, "code": code,
                                      "message": "fake stream error"}})
        assert err is not None
        return failure_from_error(self.name, err, None)
