"""FastAPI dependencies and their ``Annotated`` aliases, used by every router."""

from __future__ import annotations

import functools
import os
from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Principal, authenticate
from api.completions import Completions
from core.batches import BatchStore
from core.connections import get_async_redis, get_binary_redis, get_redis
from core.files import FileStore
from core.records import AsyncJobs
from core.settings import Settings, get_settings
from worker.app import app as celery_app

__all__ = [
    "BatchesDep",
    "CeleryDep",
    "CompletionsDep",
    "FilesDep",
    "PrincipalDep",
    "RedisDep",
    "SettingsDep",
    "async_jobs",
]

_bearer = HTTPBearer(auto_error=False, description="One of GENQ_API_KEYS")


# Dependencies that do no I/O are async: FastAPI runs a sync one in its thread pool,
# and that hop cost more than the check itself on every request.
async def _settings() -> Settings:
    return get_settings()


SettingsDep = Annotated[Settings, Depends(_settings)]


async def _files() -> FileStore:
    return FileStore(get_binary_redis(), get_settings().result_ttl_s)


FilesDep = Annotated[FileStore, Depends(_files)]


async def _batches() -> BatchStore:
    return _batch_store()


@functools.cache
def _batch_store() -> BatchStore:
    return BatchStore(get_redis(), get_settings().result_ttl_s)


BatchesDep = Annotated[BatchStore, Depends(_batches)]


async def _redis() -> redis.Redis:
    return get_redis()


RedisDep = Annotated[redis.Redis, Depends(_redis)]


async def _completions(request: Request) -> Completions:
    completions: Completions = request.app.state.completions
    return completions


CompletionsDep = Annotated[Completions, Depends(_completions)]


def async_jobs() -> AsyncJobs:
    """This process's job records for the async routes (built on first use)."""
    return _async_jobs_for(os.getpid())


@functools.cache
def _async_jobs_for(pid: int) -> AsyncJobs:
    return AsyncJobs(get_async_redis(), get_settings().job_ttl_s)


async def _celery() -> Celery:
    return celery_app


CeleryDep = Annotated[Celery, Depends(_celery)]


async def _principal(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = authenticate(credentials.credentials, settings) if credentials else None
    if principal is None:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or unknown API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(_principal)]
