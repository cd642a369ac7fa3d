"""``POST /v1/generate``: submit a job and wait a bounded time for its answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse

from api.deps import CeleryDep, CompletionsDep, PrincipalDep, SettingsDep, async_jobs
from api.idempotency import IdempotencyKey
from api.responses import SUBMITS, V1
from api.routes.jobs import POLL_AFTER_S, enqueue, wait_final
from api.schemas import Job, JobCreate
from core.records import JobRecord

router = APIRouter(prefix="/v1", tags=["jobs"], responses=V1 | SUBMITS)

#: Retry-After of a failed answer whose error names no time of its own.
RETRY_AFTER_S = 5


@router.post(
    "/generate",
    response_model=Job,
    responses={
        202: {"description": "still running: poll Location"},
        422: {"description": "bad input, or the upstream rejected the request"},
        502: {"description": "the upstream answered something unusable: see Retry-After"},
        503: {"description": "upstream unavailable and no fallback: see Retry-After"},
    },
)
async def generate(
    body: JobCreate,
    principal: PrincipalDep,
    settings: SettingsDep,
    celery: CeleryDep,
    completions: CompletionsDep,
    wait_s: Annotated[float, Query(gt=0, le=60, description="How long to wait")] = 10.0,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """200 with the result (degraded or not), 202 + Location if still running, 503 +
    Retry-After when the upstream is unavailable and the job has no fallback."""
    record = await enqueue(body, principal, settings, async_jobs(), celery, idempotency_key)
    # Woken by the job's final write (api.completions), not by polling its record.
    return _answer(await wait_final(completions, record, wait_s))


def _answer(record: JobRecord) -> Response:
    job = Job.from_record(record).model_dump(mode="json")
    if not record.status.is_final:
        headers = {"Location": f"/v1/jobs/{record.id}", "Retry-After": str(POLL_AFTER_S)}
        return JSONResponse(job, status_code=status.HTTP_202_ACCEPTED, headers=headers)
    error = record.error
    if error is None:
        return JSONResponse(job)
    if error.type.is_client_error:
        return JSONResponse(job, status_code=status.HTTP_422_UNPROCESSABLE_ENTITY)
    # The upstream (or genq's store) could not answer and nothing else could: come back.
    retry_after = {"Retry-After": str(max(1, round(error.retry_after or RETRY_AFTER_S)))}
    code = 503 if error.type.is_unavailable else status.HTTP_502_BAD_GATEWAY
    return JSONResponse(job, status_code=code, headers=retry_after)
