"""FastAPI dependencies and their ``Annotated`` aliases, used by every router."""

from __future__ import annotations

import functools
from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Principal, authenticate
from core.batches import BatchStore
from core.connections import get_binary_redis, get_redis
from core.files import FileStore
from core.records import JobStore
from core.settings import Settings, get_settings
from worker.app import app as celery_app

__all__ = [
    "BatchesDep",
    "CeleryDep",
    "FilesDep",
    "PrincipalDep",
    "RedisDep",
    "SettingsDep",
    "StoreDep",
]

_bearer = HTTPBearer(auto_error=False, description="One of GENQ_API_KEYS")


def _settings() -> Settings:
    return get_settings()


SettingsDep = Annotated[Settings, Depends(_settings)]


@functools.cache
def _store() -> JobStore:
    return JobStore(get_redis(), get_settings().job_ttl_s)


def _job_store() -> JobStore:
    return _store()


StoreDep = Annotated[JobStore, Depends(_job_store)]


def _files() -> FileStore:
    return FileStore(get_binary_redis(), get_settings().result_ttl_s)


FilesDep = Annotated[FileStore, Depends(_files)]


def _batches() -> BatchStore:
    return _batch_store()


@functools.cache
def _batch_store() -> BatchStore:
    return BatchStore(get_redis(), get_settings().result_ttl_s)


BatchesDep = Annotated[BatchStore, Depends(_batches)]


def _redis() -> redis.Redis:
    return get_redis()


RedisDep = Annotated[redis.Redis, Depends(_redis)]


def _celery() -> Celery:
    return celery_app


CeleryDep = Annotated[Celery, Depends(_celery)]


def _principal(
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
