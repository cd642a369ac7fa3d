"""``POST /v1/generate``: submit a job and wait a bounded time for its answer."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import CeleryDep, PrincipalDep, SettingsDep, StoreDep
from api.idempotency import IdempotencyKey
from api.responses import CREATES, V1
from api.routes.jobs import POLL_AFTER_S, enqueue
from api.schemas import Job, JobCreate
from core.errors import StorageUnavailable
from core.records import JobRecord

router = APIRouter(prefix="/v1", tags=["jobs"], responses=V1 | CREATES)

#: Retry-After of a failed answer whose error names no time of its own.
RETRY_AFTER_S = 5
#: How often the route looks at the job record while it waits.
POLL_INTERVAL_S = 0.02


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
    store: StoreDep,
    celery: CeleryDep,
    wait_s: Annotated[float, Query(gt=0, le=60, description="How long to wait")] = 10.0,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """200 with the result (degraded or not), 202 + Location if still running, 503 +
    Retry-After when the upstream is unavailable and the job has no fallback."""
    record = await run_in_threadpool(
        enqueue, body, principal, settings, store, celery, idempotency_key
    )
    deadline = time.monotonic() + wait_s
    while not record.status.is_final and time.monotonic() < deadline:
        await asyncio.sleep(POLL_INTERVAL_S)
        record = await run_in_threadpool(_reload, store, record)
    return _answer(record)


def _reload(store: StoreDep, record: JobRecord) -> JobRecord:
    try:
        return store.get(record.id) or record
    except StorageUnavailable:
        return record  # answered as still running (202 + Location) if it stays so


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
