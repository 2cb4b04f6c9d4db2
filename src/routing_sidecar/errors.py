"""The sidecar's error tree; each error says whether retrying the same call can help.

    RoutingError (retryable=False)
    +-- InvalidArgument        a request field is malformed; names the field
    +-- NotFound               an id the caller sent is unknown
    +-- AlreadyExists          a write would duplicate an existing record
    +-- FailedPrecondition     the request is valid but the state forbids it
    +-- ResourceExhausted      a cap is reached (e.g. new label values); names the label
    +-- ConfigError            a config file fails validation; names file and path
    +-- Unavailable (retryable=True)   the sidecar is starting, draining or overloaded
    |   +-- BudgetUnavailable          the shared budget ledger (Redis) cannot be reached
    +-- StorageError (retryable=True)  the store could not commit; nothing was acknowledged
    +-- Internal               a bug; the message is safe to show, details are logged
    +-- ProviderError (retryable per classification)  one call to an LLM provider failed

grpc_api maps each class to a status code in one table.
"""

from __future__ import annotations

from routing_sidecar.calls import Usage
from routing_sidecar.domain import AttemptStatus


class RoutingError(Exception):
    """Root of every error the sidecar raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RoutingError):
    """A request field is malformed; the message starts with the field's path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(RoutingError):
    """An identifier the caller sent is unknown."""


class AlreadyExists(RoutingError):
    """A write would duplicate an existing record."""


class FailedPrecondition(RoutingError):
    """The request is well formed but the current state forbids it."""


class ResourceExhausted(RoutingError):
    """A bounded resource is full: the request would add a value beyond a configured cap."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class ConfigError(RoutingError):
    """A configuration file failed validation; carries every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: invalid configuration\n{lines}")
        self.source = source
        self.problems = problems


class Unavailable(RoutingError):
    """The sidecar cannot serve right now; the same call may succeed later."""

    retryable = True


class BudgetUnavailable(Unavailable):
    """The shared budget ledger cannot be reached: budgets cannot be checked or changed."""


class StorageError(RoutingError):
    """The store failed to commit; nothing was acknowledged."""

    retryable = True


class Internal(RoutingError):
    """An unexpected failure; the message carries no secrets or internals."""


# --- provider calls (execute mode) ---------------------------------------------------------

_NOTHING_CONSUMED = Usage()
_RETRYABLE_STATUSES = frozenset(
    {AttemptStatus.TRANSIENT_ERROR, AttemptStatus.TIMEOUT, AttemptStatus.RATE_LIMITED}
)


class ProviderError(RoutingError):
    """One attempt at a provider failed; says how (for retry and health) and what it consumed.

    `status` is the attempt status it maps to (never SUCCESS), `error_type` a short token such
    as `http_429`, `connect_error`, `first_token_timeout`, `stream_error` or `overloaded_error`,
    `http_status` the HTTP status when there was one, `retry_after_s` the wait the provider
    asked for, and `usage` what was consumed before the failure (input tokens if known, output
    tokens streamed so far) so a cut stream or a cancel can be charged. The message names the
    provider and the failure, never a key or a header.
    """

    def __init__(
        self,
        message: str,
        *,
        status: AttemptStatus,
        error_type: str,
        http_status: int | None = None,
        retry_after_s: float | None = None,
        usage: Usage = _NOTHING_CONSUMED,
    ) -> None:
        if status is AttemptStatus.SUCCESS:
            raise ValueError("a ProviderError cannot have status SUCCESS")
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.http_status = http_status
        self.retry_after_s = retry_after_s
        self.usage = usage
        self.retryable = status in _RETRYABLE_STATUSES

    def with_usage(self, usage: Usage) -> ProviderError:
        """The same failure carrying what was consumed up to it."""
        return ProviderError(
            self.message, status=self.status, error_type=self.error_type,
            http_status=self.http_status, retry_after_s=self.retry_after_s, usage=usage,
        )
