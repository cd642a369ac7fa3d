"""The front door's baseline: a minimal FastAPI app doing the Redis work genq's API does.

``uvicorn bench.minimal_app:app``, configured by the same ``GENQ_*`` settings. The same
bearer check (every configured key compared in constant time; the owner is the key's
digest), then for ``GET /v1/jobs/{id}`` one read of genq's job record (``HMGET`` of its
fields, as ``JobStore.get``) and 404 for another key's job; for ``POST /v1/jobs`` a
validated body, one ``MULTI`` of the record's ``HSET`` and the message's ``LPUSH``, and
202 with ``Location``. Async routes on ``redis.asyncio``: what a user would write to do
only that. Run by bench/api_bench.py.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import uuid
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Response
from pydantic import BaseModel, Field
from redis import asyncio as aioredis

from core import keys
from core.contract import QUEUE_INTERACTIVE, utcnow
from core.settings import get_settings

FIELDS = ("owner", "status", "created_at", "started_at", "finished_at", "result", "error")

app = FastAPI()


class JobIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=100_000)


@functools.cache
def _redis() -> aioredis.Redis:
    settings = get_settings()
    timeout = settings.redis_socket_timeout_s
    return aioredis.Redis.from_url(
        settings.redis_url, decode_responses=True, socket_timeout=timeout, max_connections=256
    )


@functools.cache
def _keys() -> tuple[bytes, ...]:
    return tuple(k.get_secret_value().encode() for k in get_settings().api_keys)


def _owner(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    found = False
    for candidate in _keys():
        found |= hmac.compare_digest(key.encode(), candidate)
    if scheme.lower() != "bearer" or not found:
        raise HTTPException(401, "missing or unknown API key")
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@app.get("/v1/jobs/{job_id}")
async def get_job(
    job_id: str, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    owner = _owner(authorization)
    values = await _redis().hmget(keys.job(job_id), FIELDS)
    record = {name: value for name, value in zip(FIELDS, values, strict=True) if value}
    if record.get("owner") != owner:
        raise HTTPException(404, f"no job {job_id!r}")
    return {"id": job_id, **record}


@app.post("/v1/jobs", status_code=202)
async def submit_job(
    body: JobIn, response: Response, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    owner = _owner(authorization)
    job_id = uuid.uuid4().hex
    record = {"owner": owner, "status": "queued", "created_at": utcnow()}
    message = json.dumps({"id": job_id, "job": {"job_id": job_id, "request": body.model_dump()}})
    async with _redis().pipeline(transaction=True) as pipe:
        pipe.hset(keys.job(job_id), items=[part for pair in record.items() for part in pair])
        pipe.lpush(QUEUE_INTERACTIVE, message)
        await pipe.execute()
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return {"id": job_id, **record}
