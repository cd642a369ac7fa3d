"""Request and response bodies of the HTTP API.

Requests reuse the worker's contract models, so what the API accepts is exactly what
a task can carry; limits that come from settings are checked in :func:`check_limits`.
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from core.contract import Attempt, GenerateRequest, JobError, JobResult, JobStatus
from core.records import JobRecord
from core.settings import Settings

__all__ = ["Job", "JobCreate", "check_limits", "limit_errors"]

JobCreate = GenerateRequest


class Job(BaseModel):
    """The job object clients poll."""

    id: str
    status: JobStatus
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    result: JobResult | None = None
    error: JobError | None = None
    attempts: list[Attempt] = []

    @classmethod
    def from_record(cls, record: JobRecord) -> Job:
        """The public object of a record (validated when it was read): all but its owner."""
        fields = {name: getattr(record, name) for name in cls.model_fields}
        return cls.model_construct(**fields)


def limit_errors(body: GenerateRequest, settings: Settings) -> list[tuple[str, str]]:
    """What only the settings forbid in ``body``: (field, reason) pairs."""
    errors = []
    asked = len(body.text)
    if asked > settings.max_prompt_chars:
        field = "prompt" if body.prompt is not None else "messages"
        reason = (
            f"{field} has {asked} characters; the limit is "
            f"{settings.max_prompt_chars} (GENQ_MAX_PROMPT_CHARS)"
        )
        errors.append((field, reason))
    if len(body.context) > settings.max_context_docs:
        reason = (
            f"{len(body.context)} context documents; the limit is "
            f"{settings.max_context_docs} (GENQ_MAX_CONTEXT_DOCS)"
        )
        errors.append(("context", reason))
    context_chars = sum(len(doc.text) for doc in body.context)
    if context_chars > settings.max_context_chars:
        reason = (
            f"the context documents hold {context_chars} characters; the limit is "
            f"{settings.max_context_chars} (GENQ_MAX_CONTEXT_CHARS)"
        )
        errors.append(("context", reason))
    served = settings.served_models
    if body.model and served is not None and body.model not in served:
        errors.append(("model", f"model {body.model!r} is not served here (GENQ_ALLOWED_MODELS)"))
    return errors


def check_limits(body: GenerateRequest, settings: Settings) -> None:
    """Reject, as a 422 naming the field, what only the settings forbid."""
    errors = [
        {"type": "value_error", "loc": ("body", field), "msg": reason, "input": None}
        for field, reason in limit_errors(body, settings)
    ]
    if errors:
        raise RequestValidationError(errors)
