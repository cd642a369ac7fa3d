"""FastAPI dependencies and their ``Annotated`` aliases, used by every router."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import redis
from celery import Celery
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIRouter

from api.auth import Principal, authenticate
from api.completions import Completions
from core.batches import BatchStore
from core.connections import get_async_redis, get_binary_redis, get_redis
from core.files import FileStore
from core.quotas import quota_of
from core.records import AsyncJobs
from core.scheduler import scheduling_of
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

#: The OpenAPI security scheme of every route that takes a principal (document_bearer).
BEARER_SCHEME = {"type": "http", "scheme": "bearer", "description": "One of GENQ_API_KEYS"}


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
    settings = get_settings()
    return BatchStore(get_redis(), settings.result_ttl_s, scheduling_of(settings))


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
    settings = get_settings()
    return AsyncJobs(get_async_redis(), settings.job_ttl_s, quota_of(settings))


async def _celery() -> Celery:
    return celery_app


CeleryDep = Annotated[Celery, Depends(_celery)]


async def _principal(request: Request) -> Principal:
    # The bearer key is read here, not through FastAPI's HTTPBearer dependency: every
    # dependency FastAPI solves costs a poll more than the check itself (one level less
    # was 15-20 us of CPU per request). The scheme is still documented (document_bearer).
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    bearer = scheme.lower() == "bearer" and key
    principal = authenticate(key, get_settings()) if bearer else None
    if principal is None:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or unknown API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(_principal)]


def _takes(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(d.call is call or _takes(d, call) for d in dependant.dependencies)


def document_bearer(application: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Declare the bearer scheme in ``application``'s OpenAPI document on every operation
    of ``routers`` (included with no prefix) that takes a principal, as FastAPI's
    HTTPBearer dependency did."""
    generate = application.openapi
    secured = [
        (route.path_format, method.lower())
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and _takes(route.dependant, _principal)
        for method in route.methods or ()
    ]

    def openapi() -> dict[str, Any]:
        if application.openapi_schema:
            return application.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["HTTPBearer"] = BEARER_SCHEME
        for path, method in secured:
            schema["paths"][path][method]["security"] = [{"HTTPBearer": []}]
        return schema

    application.openapi = openapi  # type: ignore[method-assign]
