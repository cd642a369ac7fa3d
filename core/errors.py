"""genq's one error tree; each class's ``type`` is a ``core.contract.ErrorType``.

    GenqError                         internal_error
    ├── UpstreamError                 a call to the model endpoint did not give a generation
    │   ├── UpstreamTimeout           no answer within the read/connect timeout   (transient)
    │   ├── UpstreamUnavailable       5xx, refused/reset connection, 503 "loading" (transient)
    │   ├── UpstreamRateLimited       429; ``retry_after`` says when to come back  (transient)
    │   ├── UpstreamMalformed         2xx whose body is not the protocol's shape   (transient)
    │   └── UpstreamRejected          400/401/403/404/422: the request is wrong    (final)
    ├── CircuitOpenError              the shared breaker refused the call (also a pybreaker
    │                                 ``CircuitBreakerError``); carries ``retry_after``
    ├── ServiceUnavailable            the upstream cannot be used and the job has no fallback
    ├── SlotUnavailable               no call slot came free in time (``core.capacity``)
    ├── InvalidJob                    a task payload that does not validate        (final)
    ├── JobLost                       no message will finish the job (the reconciler)
    └── StorageUnavailable            Redis could not be reached for a job record  (transient)

``transient`` errors are worth retrying later. Upstream failures count against the
circuit, rejections never do. Messages never contain the upstream token: the upstream
client scrubs bodies before raising.
"""

from __future__ import annotations

import pybreaker

from core.contract import ErrorType, RefusalReason

__all__ = [
    "CircuitOpenError",
    "GenqError",
    "InvalidJob",
    "JobLost",
    "ServiceUnavailable",
    "SlotUnavailable",
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

    #: Machine-readable kind, as stored in a job's ``error.type``.
    type: ErrorType = ErrorType.INTERNAL_ERROR
    #: Whether trying again later may succeed.
    transient: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class UpstreamError(GenqError):
    """Raised when the model endpoint did not return a usable generation."""

    type = ErrorType.UPSTREAM_ERROR

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status


class UpstreamTimeout(UpstreamError):
    """Raised when the upstream did not connect or answer within its timeout."""

    type = ErrorType.UPSTREAM_TIMEOUT
    transient = True


class UpstreamUnavailable(UpstreamError):
    """Raised on 5xx, a refused or reset connection, or a 503 while the model loads."""

    type = ErrorType.UPSTREAM_UNAVAILABLE
    transient = True


class UpstreamRateLimited(UpstreamError):
    """Raised on 429; ``retry_after`` holds the upstream's ``Retry-After`` in seconds.

    A 429 asks for fewer calls, not for none: it lowers the call limit and counts against
    the circuit only when ``at_floor`` (the limit could not go lower; ``worker.limiter``)."""

    type = ErrorType.UPSTREAM_RATE_LIMITED
    transient = True
    at_floor: bool = False


class UpstreamMalformed(UpstreamError):
    """Raised when a 2xx body is not the shape the protocol promises."""

    type = ErrorType.UPSTREAM_MALFORMED
    transient = True


class UpstreamRejected(UpstreamError):
    """Raised on 400/401/403/404/422: the request is wrong and retrying will not help."""

    type = ErrorType.UPSTREAM_REJECTED


class CircuitOpenError(GenqError, pybreaker.CircuitBreakerError):
    """Raised by the shared breaker instead of calling the upstream; see ``reason``."""

    type = ErrorType.CIRCUIT_OPEN

    def __init__(
        self,
        message: str,
        *,
        circuit: str,
        reason: RefusalReason,
        retry_after: float | None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.circuit = circuit
        self.reason: RefusalReason = reason


class ServiceUnavailable(GenqError):
    """Raised (recorded) when the upstream cannot be used and no fallback answer exists."""

    type = ErrorType.SERVICE_UNAVAILABLE


class SlotUnavailable(GenqError):
    """Raised when every call slot of the target stayed taken for as long as the job may
    wait (``GENQ_INTERACTIVE_SLOT_WAIT_S``, ``GENQ_BATCH_SLOT_WAIT_S``)."""

    type = ErrorType.RATE_LIMITED
    transient = True


class InvalidJob(GenqError):
    """Raised when a task payload does not validate; the job fails without a retry."""

    type = ErrorType.INVALID_JOB


class JobLost(GenqError):
    """Recorded by the reconciler for a job whose message is gone: submit it again."""

    type = ErrorType.JOB_LOST


class StorageUnavailable(GenqError):
    """Raised when Redis cannot be reached to read or write a job record."""

    type = ErrorType.STORAGE_UNAVAILABLE
    transient = True
