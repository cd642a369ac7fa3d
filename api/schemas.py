"""Request and response bodies of the HTTP API.

Requests reuse the worker's contract models, so what the API accepts is exactly what
a task can carry; limits that come from settings are checked in :func:`check_limits`.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from core.contract import Attempt, GenerateRequest, JobError, JobResult, JobStatus
from core.records import JobRecord
from core.settings import Settings

__all__ = ["Job", "JobCreate", "check_limits"]

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
        return cls.model_validate(record.model_dump(exclude={"owner"}))


def _too_long(loc: tuple[str | int, ...], msg: str) -> dict[str, Any]:
    return {"type": "too_long", "loc": loc, "msg": msg, "input": None}


def check_limits(body: GenerateRequest, settings: Settings) -> None:
    """Reject, as a 422 naming the field, what only the settings forbid."""
    errors = []
    if len(body.prompt) > settings.max_prompt_chars:
        errors.append(
            _too_long(
                ("body", "prompt"),
                f"prompt has {len(body.prompt)} characters; the limit is "
                f"{settings.max_prompt_chars} (GENQ_MAX_PROMPT_CHARS)",
            )
        )
    if len(body.context) > settings.max_context_docs:
        errors.append(
            _too_long(
                ("body", "context"),
                f"{len(body.context)} context documents; the limit is "
                f"{settings.max_context_docs} (GENQ_MAX_CONTEXT_DOCS)",
            )
        )
    allowed = settings.allowed_models
    if body.model and allowed and body.model not in {*allowed, settings.upstream_model}:
        errors.append(
            {
                "type": "value_error",
                "loc": ("body", "model"),
                "msg": f"model {body.model!r} is not served here (GENQ_ALLOWED_MODELS)",
                "input": None,
            }
        )
    if errors:
        raise RequestValidationError(errors)
