"""The exception tree: what a failure means decides what the loop does with it.

- `RetryableError`: a dependency is unavailable (broker, PostgreSQL). Keep the batch, back off, retry.
- `FatalError`: configuration or programming error. Exit non-zero; supervisord restarts the process.

A message that can never be stored is not an exception: decoding returns it as a value, an
`orders.Rejection` (so does the store for a row PostgreSQL refuses), and it goes to the DLQ.
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


class CommitNotSent(RetryableError):
    """An offset commit could not be sent (no group coordinator right now); it is sent again later."""


class FatalError(PipelineError):
    """Continuing would be wrong: bad configuration, a fenced instance, a schema that is not ours."""


class SettingsError(FatalError):
    """A configuration variable has a bad value; the message names the variable."""
