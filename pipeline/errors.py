"""The exception tree: what a failure means decides what the loop does with it.

- `RetryableError`: a dependency is unavailable (broker, PostgreSQL). Keep the batch, back off, retry.
- `BadMessage`: this one message can never be stored. Send it to the DLQ and move on.
- `FatalError`: configuration or programming error. Exit non-zero; supervisord restarts the process.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class RetryableError(PipelineError):
    """A dependency is unavailable; the same work may succeed later."""


class DatabaseUnavailable(RetryableError):
    """PostgreSQL cannot be reached or refused the transaction for a transient reason."""


class DeliveryFailed(RetryableError):
    """Messages to Kafka (the DLQ) were not confirmed by the broker."""


class BadMessage(PipelineError):
    """One message or row can never be stored; it belongs in the DLQ."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class FatalError(PipelineError):
    """Continuing would be wrong: bad configuration, a fenced instance, a schema that is not ours."""


class SettingsError(FatalError):
    """A configuration variable has a bad value; the message names the variable."""
