"""What the API and the worker agree on: task and queue names, payloads, job statuses.

The API imports this module and ``worker.app`` only; it enqueues by task name, so the
worker's code can change without the API noticing. Everything here is JSON-safe.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    model_validator,
)

__all__ = [
    "ENQUEUED_AT_HEADER",
    "QUEUE_BATCH",
    "QUEUE_INTERACTIVE",
    "REQUEST_ID_HEADER",
    "TASK_GENERATE",
    "Attempt",
    "BatchEndpoint",
    "BatchItem",
    "CachePolicy",
    "ChatMessage",
    "Citation",
    "ContextDoc",
    "ContextMode",
    "ErrorType",
    "FallbackPolicy",
    "FallbackReason",
    "GenerateRequest",
    "GenerationParams",
    "JobError",
    "JobMessage",
    "JobResult",
    "JobStatus",
    "ModelId",
    "RefusalReason",
    "Source",
    "batch_item_json",
    "task_argsrepr",
    "utcnow",
]

TASK_GENERATE = "genq.generate"
QUEUE_INTERACTIVE = "interactive"
QUEUE_BATCH = "batch"
REQUEST_ID_HEADER = "genq_request_id"
"""A task message's header: the ``X-Request-ID`` of the request that submitted it."""
ENQUEUED_AT_HEADER = "genq_enqueued_at"
"""A task message's header: when it went onto its queue, ready to run (epoch seconds)."""

MAX_CONTEXT_DOC_CHARS = 100_000


def _unicode(text: str) -> str:
    """Refuse text that no UTF-8 store can hold (a lone surrogate, e.g. JSON ``\\ud800``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text holds a lone surrogate, which is not valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]
"""A string of valid Unicode: every text a client sends is one."""


def _json_number(value: object) -> object:
    """Numbers as JSON types them: ``true`` is not 1 nor ``"5"`` 5 (but ``5.0`` is 5)."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number")
    return value


JsonNumber = BeforeValidator(_json_number)
"""The check of ``Int`` and ``Float``, for a bounded optional number (bounds go before it,
or pydantic leaves them out of the schema): ``Annotated[int, Field(ge=1), JsonNumber]``."""
Int = Annotated[int, BeforeValidator(_json_number)]
Float = Annotated[float, BeforeValidator(_json_number)]
MAX_STOP_CHARS = 256


def _not_a_path(model: str) -> str:
    if ".." in model:
        raise ValueError("a model id has no '..'")
    return model


ModelId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        # A Hugging Face repo id, ``name`` or ``org/name``, optionally ``:provider`` (as
        # the Inference Providers router takes it): it becomes part of an upstream URL.
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?(:[A-Za-z0-9._-]+)?$",
    ),
    AfterValidator(_not_a_path),
]
"""A model id: letters, digits, ``-``, ``_`` and ``.``, one ``/`` at most, never ``..``."""


class JobStatus(StrEnum):
    """Lifecycle of a job; ``succeeded`` and ``failed`` are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


class ErrorType(StrEnum):
    """A job's ``error.type`` (and an attempt's ``error_type``): what went wrong, for machines.

    Each is the ``type`` of one class of the error tree in ``core.errors``.
    """

    INTERNAL_ERROR = "internal_error"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_RATE_LIMITED = "upstream_rate_limited"
    UPSTREAM_MALFORMED = "upstream_malformed"
    UPSTREAM_REJECTED = "upstream_rejected"
    CIRCUIT_OPEN = "circuit_open"
    SERVICE_UNAVAILABLE = "service_unavailable"
    RATE_LIMITED = "rate_limited"
    INVALID_JOB = "invalid_job"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    JOB_LOST = "job_lost"

    @property
    def is_unavailable(self) -> bool:
        """The upstream (or genq's store) could not answer now; later may work."""
        return self in (
            ErrorType.UPSTREAM_TIMEOUT,
            ErrorType.UPSTREAM_UNAVAILABLE,
            ErrorType.UPSTREAM_RATE_LIMITED,
            ErrorType.RATE_LIMITED,
            ErrorType.CIRCUIT_OPEN,
            ErrorType.SERVICE_UNAVAILABLE,
            ErrorType.STORAGE_UNAVAILABLE,
        )

    @property
    def is_client_error(self) -> bool:
        """The request itself was wrong: retrying it unchanged will not help."""
        return self in (ErrorType.UPSTREAM_REJECTED, ErrorType.INVALID_JOB)


def utcnow() -> str:
    """Now, as the ISO-8601 UTC string (milliseconds, ``Z``) every record uses."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Source = Literal["upstream", "cache", "excerpt"]
CachePolicy = Literal["fallback", "prefer", "off"]
ContextMode = Literal["prompt", "fallback_only"]
FallbackPolicy = Literal["auto", "none"]
FailoverPolicy = Literal["auto", "none"]
RefusalReason = Literal["circuit_open", "circuit_forced_open", "probe_in_flight"]
"""Why the shared breaker refused a call."""
FallbackReason = Literal[RefusalReason, "upstream_failed", "rate_limited"]
"""Why a result is degraded: the breaker refused, the upstream's retries ran out, or no
call slot came free within the job's wait (the cluster's call limit was reached)."""


class _Strict(BaseModel):
    # NaN and Infinity are not numbers a client means (and not JSON): refused.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GenerationParams(_Strict):
    """Sampling parameters, mapped onto each upstream protocol's own names
    (``max_new_tokens`` is sent as ``max_tokens`` to OpenAI-compatible routes; it may be
    given under that name, or as ``max_completion_tokens``, too)."""

    max_new_tokens: Int = Field(
        default=256,
        ge=1,
        le=8192,
        validation_alias=AliasChoices("max_new_tokens", "max_tokens", "max_completion_tokens"),
    )
    temperature: Float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: Float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[Annotated[Text, Field(min_length=1, max_length=MAX_STOP_CHARS)]] = Field(
        default_factory=list, max_length=8
    )
    seed: Annotated[int, Field(ge=0, le=2**53 - 1), BeforeValidator(_json_number)] | None = None
    """Bounded as I-JSON (RFC 7493) bounds integers: every JSON parser reads it exactly.
    (The bounds come before the validator, or pydantic leaves them out of the schema.)"""


class ChatMessage(_Strict):
    """One message of a chat job."""

    role: Literal["system", "user", "assistant"]
    content: Text = Field(max_length=MAX_CONTEXT_DOC_CHARS)


class ContextDoc(_Strict):
    """A document the job carries: the material an excerpt is built from."""

    id: Text = Field(min_length=1, max_length=256)
    text: Text = Field(min_length=1, max_length=MAX_CONTEXT_DOC_CHARS)
    title: Text | None = Field(default=None, max_length=1024)
    url: Text | None = Field(default=None, max_length=2048)


_EXACTLY_ONE_INPUT: list[JsonValue] = [
    {
        "required": ["prompt"],
        "properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}},
    },
    {
        "required": ["messages"],
        "properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}},
    },
]
"""The schema's word for "exactly one of ``prompt`` and ``messages``" (the validator's)."""


class GenerateRequest(_Strict):
    """One generation as a client asks for it, a ``prompt`` or chat ``messages`` (exactly
    one); limits that depend on settings are the API's."""

    model_config = ConfigDict(json_schema_extra={"anyOf": _EXACTLY_ONE_INPUT})

    prompt: Text | None = Field(default=None, min_length=1)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=256)
    model: ModelId | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    context: list[ContextDoc] = Field(default_factory=list)
    cache: CachePolicy = "fallback"
    """``fallback``: read the cache only when the upstream cannot be used; ``prefer``:
    serve a hit without calling the upstream; ``off``: never read or write it."""
    fallback: FallbackPolicy = "auto"
    """``none``: fail with ``service_unavailable`` instead of a degraded answer."""
    failover: FailoverPolicy = "auto"
    """``none``: only the primary target may answer (``GENQ_UPSTREAM_FAILOVER`` is skipped)."""
    context_mode: ContextMode = "prompt"
    """``prompt``: the context documents are sent to the model (``worker.prompt``);
    ``fallback_only``: they only feed the excerpt fallback."""

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self

    @property
    def text(self) -> str:
        """What was asked, as text: the prompt, or every message's content (for the
        excerpt's ranking and for length limits)."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(m.content for m in self.messages or ())


BatchEndpoint = Literal["/v1/completions", "/v1/chat/completions"]
"""The OpenAI endpoints a batch's lines may target."""


class BatchItem(_Strict):
    """Where a batch item's answer goes: its batch, its line (0-based), its ``custom_id``,
    and the endpoint whose response shape the output line takes."""

    batch_id: str = Field(min_length=1, max_length=64)
    index: int = Field(ge=0)
    custom_id: Text = Field(min_length=1, max_length=512)
    endpoint: BatchEndpoint


class JobMessage(_Strict):
    """The body of a ``genq.generate`` task: the job id and what to generate; a batch
    item also says where its answer goes (``job_id`` is then the item's request id)."""

    job_id: str = Field(min_length=1, max_length=64)
    request: GenerateRequest
    batch: BatchItem | None = None
    owner: str | None = Field(default=None, max_length=64)
    """The digest of the key that submitted it: the scope of its cached answers."""
    # What the job's retries spent so far, one count per budget (worker.outcome.Budget);
    # the worker's retry raises one of them in the message it publishes.
    retries: int = Field(default=0, ge=0)
    """Retries after a transient upstream error or an unreachable job store
    (``GENQ_MAX_RETRIES``)."""
    throttled: int = Field(default=0, ge=0)
    """Retries made so far because the upstream said "slower" (a 429, or no call slot in
    time): they have their own budget (``GENQ_MAX_THROTTLED_RETRIES``)."""
    circuit_waits: int = Field(default=0, ge=0)
    """Times a batch item was put back because its circuit was open: bounded by the
    batch's window, they spend no retry budget."""
    lease_waits: int = Field(default=0, ge=0)
    """Times the job came back later because another copy held its running lease."""
    failovers: int = Field(default=0, ge=0)
    """Times a transient failure at one target sent the job on to the next at once."""
    target: int = Field(default=0, ge=0)
    """The index, in the job's targets (``worker.router``), where this run starts."""
    stream: bool = False
    """Relay the answer's pieces as the upstream sends them (``worker.streaming``)."""


def batch_item_json(
    request_id: str, request: GenerateRequest, item: dict[str, Any], owner: str
) -> str:
    """A batch item's ``genq.generate`` argument as JSON: the object :class:`JobMessage`
    decodes, ``item`` holding :class:`BatchItem`'s fields. Put together from its parts'
    own encodings (the request's by its model, what was set on it: ``to_request`` sets
    only what a line says; the rest by ``json``), from values validated already: a model
    per item, or a dict per item dumped whole, cost more than the rest of a large
    batch's message (the worker validates it)."""
    return (
        f'{{"job_id": {json.dumps(request_id)}, '
        f'"request": {request.model_dump_json(exclude_unset=True)}, '
        f'"batch": {json.dumps(item)}, "owner": {json.dumps(owner)}}}'
    )


def task_argsrepr(job_id: str, batch_id: str | None = None) -> str:
    """What Flower shows as a ``genq.generate`` task's arguments: its ids, never the
    prompt its message carries. Every message genq publishes sets it: the API's, a
    retry's and a re-published one's alike."""
    return f"[{job_id!r}]" if batch_id is None else f"[{job_id!r}, {batch_id!r}]"


class Citation(_Strict):
    """A context document an excerpt quotes."""

    id: str
    title: str | None = None
    url: str | None = None


class JobResult(_Strict):
    """What a finished job answered, and where the answer came from.

    ``degraded`` is true for ``cache`` and ``excerpt`` answers; ``fallback_reason``,
    ``circuit`` and ``retry_after`` then say why and when the upstream may be back.
    """

    text: str
    model: str
    source: Source
    degraded: bool
    latency_ms: float
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    fallback_reason: FallbackReason | None = None
    circuit: str | None = None
    retry_after: float | None = None
    citations: list[Citation] = Field(default_factory=list)
    target: str | None = None
    """The circuit name of the target that answered (null for cache and excerpt)."""
    failover: bool = False
    """True when that target is not the job's first (``GENQ_UPSTREAM_FAILOVER``)."""
    cached_from: str | None = None
    """A cache answer: the circuit name of the target whose answer was cached."""


class JobError(_Strict):
    """Why a job failed: a machine-readable ``type`` and a message for a person."""

    type: ErrorType
    message: str
    retry_after: float | None = None


class Attempt(_Strict):
    """One try at the upstream, as recorded on the job."""

    at: str
    outcome: Literal["succeeded", "failed", "rejected"]
    error_type: ErrorType | None = None

    @classmethod
    def now(
        cls,
        outcome: Literal["succeeded", "failed", "rejected"],
        error_type: ErrorType | None = None,
    ) -> Attempt:
        """An attempt that ended just now."""
        return cls(at=utcnow(), outcome=outcome, error_type=error_type)
