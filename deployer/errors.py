"""The one exception tree of deployer; each class carries the CLI exit code of its failure class.

The library raises only these (foreign errors are mapped at the module that meets them), so the CLI
needs exactly one error boundary.
"""

from __future__ import annotations


class DeployerError(Exception):
    """Base of every error deployer reports. ``hint`` is an optional next step for the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Multi-line context (e.g. a server log tail) shown after the one-line message.
        self.details = details


class UsageError(DeployerError):
    """Bad input from the user: manifest, flags, files, versions."""

    exit_code = 2


class ManifestError(UsageError):
    """The manifest is missing, unreadable or invalid."""


class TrainerError(UsageError):
    """The manifest's trainer cannot be imported or called."""


class StoreError(UsageError):
    """The versioned base path is unusable (not writable, missing version, partial version)."""


class VersionNotFound(StoreError):
    """A requested model version does not exist on disk."""


class InputDataError(UsageError):
    """Prediction input (CSV/JSON/--example) is malformed."""


class UnsafeStateError(UsageError):
    """The state directory or a file in it is unsafe to use: a symlink, a FIFO, another user's, writable by
    others, a foreign non-empty directory, or not a directory at all."""


class RuntimeUnavailable(DeployerError):
    """The server runtime cannot be used: daemon unreachable, image missing, binary missing."""

    exit_code = 3


class NotHealthy(DeployerError):
    """The server did not become healthy: load error, timeout, server exited."""

    exit_code = 4


class SmokeFailed(DeployerError):
    """At least one smoke case got a wrong answer or an error."""

    exit_code = 5


class PromoteFailed(DeployerError):
    """A promotion or rollback failed; the previous state was restored."""

    exit_code = 6


class ServerRequestError(DeployerError):
    """A request to a running model server failed (mapped from a gRPC status)."""

    def __init__(self, message: str, *, code: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "unexpected": DeployerError.exit_code,
    "usage": UsageError.exit_code,
    "runtime_unavailable": RuntimeUnavailable.exit_code,
    "not_healthy": NotHealthy.exit_code,
    "smoke_failed": SmokeFailed.exit_code,
    "promote_failed": PromoteFailed.exit_code,
}
