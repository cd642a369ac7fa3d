"""genq's one error tree.

    GenqError
    ├── UpstreamError                 a call to the model endpoint did not give a generation
    │   ├── UpstreamTimeout           no answer within the read/connect timeout  (transient)
    │   ├── UpstreamUnavailable       5xx, refused/reset connection, 503 "loading" (transient)
    │   ├── UpstreamRateLimited       429; ``retry_after`` says when to come back   (transient)
    │   ├── UpstreamMalformed         2xx whose body is not the protocol's shape    (transient)
    │   └── UpstreamRejected          400/401/403/404/422: the request itself is wrong (final)
    ├── CircuitOpenError              the shared breaker refused the call (also a pybreaker
    │                                 ``CircuitBreakerError``); carries ``retry_after``
    ├── InvalidJob                    a task payload that does not validate (final)
    ├── JobFinished                   a redelivered job is already final: nothing to do
    └── StorageUnavailable            Redis could not be reached for a job record

``transient`` errors are worth retrying while the circuit is closed and count as breaker
failures; final ones are not retried and never touch the breaker. Messages never
contain the upstream token: the upstream client scrubs bodies before raising.
"""

from __future__ import annotations

import pybreaker

__all__ = [
    "CircuitOpenError",
    "GenqError",
    "InvalidJob",
    "JobFinished",
    "StorageUnavailable",
    "UpstreamError",
    "UpstreamMalformed",
    "UpstreamRateLimited",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class GenqError(Exception):
    """Root of every error genq raises on purpose."""

    #: Short machine-readable name, as stored in a job's ``error.type``.
    type: str = "internal_error"
    #: Whether trying again later may succeed.
    transient: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class UpstreamError(GenqError):
    """Raised when the model endpoint did not return a usable generation."""

    type = "upstream_error"

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status


class UpstreamTimeout(UpstreamError):
    """Raised when the upstream did not connect or answer within its timeout."""

    type = "upstream_timeout"
    transient = True


class UpstreamUnavailable(UpstreamError):
    """Raised on 5xx, a refused or reset connection, or a 503 while the model loads."""

    type = "upstream_unavailable"
    transient = True


class UpstreamRateLimited(UpstreamError):
    """Raised on 429; ``retry_after`` holds the upstream's ``Retry-After`` in seconds."""

    type = "upstream_rate_limited"
    transient = True


class UpstreamMalformed(UpstreamError):
    """Raised when a 2xx body is not the shape the protocol promises."""

    type = "upstream_malformed"
    transient = True


class UpstreamRejected(UpstreamError):
    """Raised on 400/401/403/404/422: the request is wrong and retrying will not help."""

    type = "upstream_rejected"


class CircuitOpenError(GenqError, pybreaker.CircuitBreakerError):
    """Raised by the shared breaker instead of calling the upstream; see ``reason``."""

    type = "circuit_open"

    def __init__(
        self, message: str, *, circuit: str, reason: str, retry_after: float | None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.circuit = circuit
        #: ``circuit_open`` | ``circuit_forced_open`` | ``probe_in_flight``
        self.reason = reason


class InvalidJob(GenqError):
    """Raised when a task payload does not validate; the job fails without a retry."""

    type = "invalid_job"


class JobFinished(GenqError):
    """Raised when a (redelivered) job is already final or gone; the task just acks it."""

    type = "job_finished"


class StorageUnavailable(GenqError):
    """Raised when Redis cannot be reached to read or write a job record."""

    type = "storage_unavailable"
    transient = True
