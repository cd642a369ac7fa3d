"""``/v1/jobs``: submit one generation, poll it."""

from __future__ import annotations

import functools
import logging
import uuid

from celery import Celery
from fastapi import APIRouter, HTTPException, Response, status

from api.auth import Principal
from api.deps import CeleryDep, PrincipalDep, SettingsDep, StoreDep
from api.idempotency import Idempotency, IdempotencyKey, fingerprint
from api.metrics import JOBS_SUBMITTED
from api.publish import TaskMessages
from api.responses import BY_ID, CREATES, V1
from api.schemas import Job, JobCreate, check_limits
from core.connections import get_redis
from core.contract import QUEUE_INTERACTIVE, JobMessage, task_argsrepr
from core.errors import StorageUnavailable
from core.records import JobRecord, JobStore
from core.settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=V1)
log = logging.getLogger(__name__)

#: How soon a client polling an unfinished job should come back, in seconds.
POLL_AFTER_S = 1


def _unavailable(what: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        detail=f"{what} is unreachable; nothing was accepted, try again shortly",
        headers={"Retry-After": "5"},
    )


def enqueue(
    body: JobCreate,
    principal: Principal,
    settings: Settings,
    store: JobStore,
    celery: Celery,
    idempotency_key: str | None = None,
) -> JobRecord:
    """Record the job, then publish it; nothing is left behind if either fails. With an
    ``Idempotency-Key`` seen before (same body), the job it created comes back instead."""
    check_limits(body, settings)
    claim = Idempotency.of(
        get_redis(), principal.owner, "jobs", idempotency_key, fingerprint(body.model_dump_json())
    )
    try:
        earlier = claim.claim()
        if earlier is not None:
            found = store.get(earlier)
            if found is not None:
                return found
        record = _publish(body, principal, store, celery, settings.redis_socket_timeout_s)
    except StorageUnavailable as exc:
        claim.release()
        raise _unavailable("the job store") from exc
    except BaseException:
        claim.release()
        raise
    claim.done(record.id)
    return record


def _publish(
    body: JobCreate,
    principal: Principal,
    store: JobStore,
    celery: Celery,
    within_s: float = 5.0,
) -> JobRecord:
    """Write the job's record and its ``genq.generate`` message in one Redis transaction:
    a submit that fails leaves neither behind (the broker and the job store are one Redis)."""
    job_id = uuid.uuid4().hex
    payload = JobMessage(job_id=job_id, request=body, owner=principal.owner)
    # What Flower shows for the task (argsrepr): its id, never the prompt it carries.
    message = _messages(celery).message(
        job_id, payload.model_dump(mode="json", exclude_defaults=True), task_argsrepr(job_id)
    )
    try:
        enqueue = (QUEUE_INTERACTIVE, message)
        record = store.create(job_id, principal.owner, enqueue=enqueue, within_s=within_s)
    except StorageUnavailable as exc:
        log.warning("api.enqueue_failed", extra={"job_id": job_id, "error": exc.message})
        raise _unavailable("the job store and broker (Redis)") from exc
    JOBS_SUBMITTED.inc()
    return record


@functools.cache
def _messages(celery: Celery) -> TaskMessages:
    return TaskMessages(celery, QUEUE_INTERACTIVE)


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=Job, responses=CREATES)
def submit_job(
    body: JobCreate,
    principal: PrincipalDep,
    settings: SettingsDep,
    store: StoreDep,
    celery: CeleryDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Job:
    """Accept a generation job; poll the ``Location`` it returns."""
    record = enqueue(body, principal, settings, store, celery, idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    response.headers["Retry-After"] = str(POLL_AFTER_S)
    return Job.from_record(record)


@router.get("/{job_id}", response_model=Job, responses=BY_ID)
def get_job(job_id: str, principal: PrincipalDep, store: StoreDep, response: Response) -> Job:
    """The job object; ``Retry-After`` says when to poll again while it is not final."""
    try:
        record = store.get(job_id) if len(job_id) <= 64 else None
    except StorageUnavailable as exc:
        raise _unavailable("the job store") from exc
    if record is None or record.owner != principal.owner:
        # Another key's job is reported exactly like a job that does not exist.
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    if not record.status.is_final:
        response.headers["Retry-After"] = str(POLL_AFTER_S)
    return Job.from_record(record)
