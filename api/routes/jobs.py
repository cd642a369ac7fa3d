"""``/v1/jobs``: submit one generation, poll it."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError
from redis.exceptions import RedisError

from api.auth import Principal
from api.completions import Completions
from api.deps import PrincipalDep, async_jobs
from api.idempotency import AsyncIdempotency, IdempotencyKey, fingerprint
from api.metrics import JOBS_SUBMITTED
from api.publish import TaskMessages
from api.responses import BY_ID, SUBMITS, V1
from api.schemas import Job, JobCreate, check_limits
from core.connections import get_async_redis
from core.contract import QUEUE_INTERACTIVE, JobMessage, task_argsrepr
from core.errors import StorageUnavailable
from core.logs import current_request_id
from core.quotas import OverQuota
from core.records import AsyncJobs, JobRecord
from core.settings import Settings, get_settings
from worker.app import app as celery_app

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=V1)
log = logging.getLogger(__name__)

#: How soon a client polling an unfinished job should come back, in seconds.
POLL_AFTER_S = 1


def over_quota(exc: OverQuota) -> HTTPException:
    """429 for a key over its limits, saying which, with ``Retry-After``."""
    headers = {"Retry-After": str(exc.retry_after_s)}
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=exc.message, headers=headers)


def _unavailable(what: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        detail=f"{what} is unreachable; nothing was accepted, try again shortly",
        headers={"Retry-After": "5"},
    )


async def enqueue(
    body: JobCreate,
    principal: Principal,
    settings: Settings,
    jobs: AsyncJobs,
    celery: Celery,
    idempotency_key: str | None = None,
    stream: bool = False,
) -> JobRecord:
    """Record the job, then publish it; nothing is left behind if either fails. With an
    ``Idempotency-Key`` seen before (same body), the job it created comes back instead.
    ``stream``: the worker relays the answer's pieces as they come (``api.streams``)."""
    check_limits(body, settings)
    claim = AsyncIdempotency.of(
        get_async_redis(),
        principal.owner,
        "jobs",
        idempotency_key,
        fingerprint(body.model_dump_json()) if idempotency_key else "",  # only keys need it
    )
    try:
        earlier = await claim.claim()
        if earlier is not None:
            found = await jobs.get(earlier)
            if found is not None:
                return found
        within_s = settings.redis_socket_timeout_s
        record = await _publish(body, principal, jobs, celery, within_s, stream)
    except StorageUnavailable as exc:
        await _forget(claim)
        raise _unavailable("the job store") from exc
    except OverQuota as exc:
        await _forget(claim)
        raise over_quota(exc) from exc
    except BaseException:
        await _forget(claim)
        raise
    await claim.done(record.id)
    return record


async def _forget(claim: AsyncIdempotency) -> None:
    with contextlib.suppress(StorageUnavailable, RedisError):
        await claim.release()


async def _publish(
    body: JobCreate,
    principal: Principal,
    jobs: AsyncJobs,
    celery: Celery,
    within_s: float = 5.0,
    stream: bool = False,
) -> JobRecord:
    """Write the job's record and its ``genq.generate`` message in one Redis transaction:
    a submit that fails leaves neither behind (the broker and the job store are one Redis)."""
    job_id = uuid.uuid4().hex
    payload = JobMessage(job_id=job_id, request=body, owner=principal.owner, stream=stream)
    # What Flower shows for the task (argsrepr): its id, never the prompt it carries.
    message = _messages(celery).message(
        job_id,
        payload.model_dump(mode="json", exclude_defaults=True),
        task_argsrepr(job_id),
        request_id=current_request_id(),
        enqueued_at=time.time(),
    )
    try:
        record = await jobs.create(
            job_id, principal.owner, (QUEUE_INTERACTIVE, message), within_s=within_s
        )
    except StorageUnavailable as exc:
        log.warning("api.enqueue_failed", extra={"job_id": job_id, "error": exc.message})
        raise _unavailable("the job store and broker (Redis)") from exc
    JOBS_SUBMITTED.inc()
    # DEBUG: at INFO, this line's write cost ~10% of the front door's submit rate
    # (bench/api_bench.py); the worker's job.finished carries the same two ids.
    log.debug("api.job_accepted", extra={"job_id": job_id})
    return record


async def _owned(job_id: str, principal: Principal) -> JobRecord:
    """The job's record, read now; 404 for a job that is not this key's (or none)."""
    try:
        record = await async_jobs().get(job_id) if len(job_id) <= 64 else None
    except StorageUnavailable as exc:
        raise _unavailable("the job store") from exc
    if record is None or record.owner != principal.owner:
        # Another key's job is reported exactly like a job that does not exist.
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    return record


async def wait_final(completions: Completions, record: JobRecord, wait_s: float) -> JobRecord:
    """The job's record once it is final, or as it is after ``wait_s``: woken by the
    job's final write, reading Redis only before and after the wait."""
    latest = record

    async def is_final() -> bool:
        nonlocal latest
        latest = await _read_or(latest)
        return latest.status.is_final

    if await completions.wait(record.id, wait_s, is_final) and latest.status.is_final:
        return latest
    return await _read_or(latest)


async def _read_or(record: JobRecord) -> JobRecord:
    """The record read again; the one given if Redis does not answer (or it expired)."""
    try:
        return await async_jobs().get(record.id) or record
    except StorageUnavailable:
        return record


@functools.cache
def _messages(celery: Celery) -> TaskMessages:
    return TaskMessages(celery, QUEUE_INTERACTIVE)


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=Job, responses=SUBMITS)
async def submit_job(
    body: JobCreate, principal: PrincipalDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Accept a generation job; poll the ``Location`` it returns."""
    # The settings and the Celery app are read directly, not as dependencies: on the
    # hottest route, solving each cost more than what it gives (see api.deps._principal).
    settings = get_settings()
    record = await enqueue(body, principal, settings, async_jobs(), celery_app, idempotency_key)
    headers = {"Location": f"/v1/jobs/{record.id}", "Retry-After": str(POLL_AFTER_S)}
    return job_response(record, status.HTTP_202_ACCEPTED, headers)


_WAIT_S: TypeAdapter[float] = TypeAdapter(Annotated[float, Field(gt=0, le=60)])
_WAIT_S_DOC = (
    "Long-poll: answer as soon as the job is final, or with the record as it is after "
    "this many seconds"
)
_WAIT_S_PARAMETER = {
    "in": "query",
    "name": "wait_s",
    "required": False,
    "description": _WAIT_S_DOC,
    "schema": {**_WAIT_S.json_schema(), "title": "Wait S", "description": _WAIT_S_DOC},
}


def _wait_s(request: Request) -> float | None:
    """``wait_s`` from the query, checked by pydantic with the bounds it documents, a bad
    one a 422 naming it as FastAPI's would. It is read here, not declared as a
    parameter: FastAPI's solving of a declared one cost every poll ~10% of its CPU."""
    raw = request.query_params.get("wait_s")
    if raw is None:
        return None
    try:
        return _WAIT_S.validate_python(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", "wait_s")} for e in exc.errors()]
        raise RequestValidationError(errors) from None


@router.get(
    "/{job_id}",
    response_model=Job,
    responses=BY_ID,
    openapi_extra={"parameters": [_WAIT_S_PARAMETER]},
)
async def get_job(job_id: str, principal: PrincipalDep, request: Request) -> Response:
    """The job object; ``Retry-After`` says when to poll again while it is not final.
    With ``wait_s``, the answer comes as soon as the job is final (a completion signal,
    no polling), or with the record as it is once ``wait_s`` has passed."""
    wait_s = _wait_s(request)
    record = await _owned(job_id, principal)
    if wait_s is not None and not record.status.is_final:
        record = await wait_final(request.app.state.completions, record, wait_s)
    headers = {} if record.status.is_final else {"Retry-After": str(POLL_AFTER_S)}
    return job_response(record, status.HTTP_200_OK, headers)


def job_response(record: JobRecord, code: int, headers: dict[str, str]) -> Response:
    """The job object as JSON. Returned as a response, not a model for FastAPI to check
    again against ``response_model`` (which only documents it here): that second check
    cost more than the Redis read of a poll."""
    body = Job.from_record(record).model_dump_json()
    return Response(body, code, headers, media_type="application/json")
