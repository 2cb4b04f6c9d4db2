"""The sidecar's error tree; each error says whether retrying the same call can help.

    RoutingError (retryable=False)
    +-- InvalidArgument        a request field is malformed; names the field
    +-- NotFound               an id the caller sent is unknown
    +-- AlreadyExists          a write would duplicate an existing record
    +-- FailedPrecondition     the request is valid but the state forbids it
    +-- ConfigError            a config file fails validation; names file and path
    +-- Unavailable (retryable=True)   the sidecar is starting, draining or overloaded
    +-- StorageError (retryable=True)  the store could not commit; nothing was acknowledged
    +-- Internal               a bug; the message is safe to show, details are logged

grpc_api maps each class to a status code in one table.
"""

from __future__ import annotations


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


class StorageError(RoutingError):
    """The store failed to commit; nothing was acknowledged."""

    retryable = True


class Internal(RoutingError):
    """An unexpected failure; the message carries no secrets or internals."""
