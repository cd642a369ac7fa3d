"""Celery tasks, thin like web views: decode, call the service, map its outcome to a retry."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from pydantic import ValidationError

from worker.app import app
from worker.contract import TASK_GENERATE, JobMessage
from worker.errors import InvalidJob
from worker.generation import get_service

__all__ = ["generate"]

log = logging.getLogger(__name__)


@app.task(name=TASK_GENERATE, bind=True, max_retries=None)
def generate(self: Task[Any, Any], job: dict[str, Any]) -> dict[str, Any] | None:
    """Run one generation job; its outcome is written to the job record.

    Returns the result (Flower shows it; no result backend stores it: the job record is
    what clients read)."""
    service = get_service()
    try:
        message = JobMessage.model_validate(job)
    except ValidationError as exc:
        job_id = job.get("job_id") if isinstance(job, dict) else None
        log.error("task.invalid_payload", extra={"job_id": job_id, "errors": exc.error_count()})
        if isinstance(job_id, str):
            invalid = InvalidJob(f"invalid job payload: {exc.error_count()} error(s)")
            service.fail(job_id, invalid)
        return None
    outcome = service.run(message, retries_done=self.request.retries)
    if outcome.retry_in is not None:
        # The only retry layer: the slot is freed while the countdown runs.
        raise self.retry(countdown=outcome.retry_in)
    return outcome.result.model_dump(mode="json") if outcome.result else None
