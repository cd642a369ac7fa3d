"""The HTTP API: ``uvicorn api.main:app``. It enqueues by task name and reads job records."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from fastapi import FastAPI

from api import errors, metrics, status
from api.cluster import read_cluster
from api.completions import Completions
from api.deps import document_bearer
from api.docs import install_docs
from api.limits import BodyLimits
from api.probes import Monitor
from api.request_ids import RequestIds
from api.routes import batches, circuits, files, generate, health, jobs, openai_api
from core.connections import get_async_redis, get_redis
from core.logs import configure_logging
from core.settings import get_settings

__all__ = ["app", "create_app"]


@contextlib.asynccontextmanager
async def _lifespan(application: FastAPI) -> AsyncIterator[None]:
    configure_logging(get_settings())
    monitor = Monitor(lambda: get_redis().ping(), read_cluster)
    await monitor.check()  # ready from the first request if Redis is
    monitor.start()
    application.state.monitor = monitor
    application.state.completions = Completions(get_async_redis)
    # What start-up built (modules, routes, schemas) lives as long as the process: out of
    # the collector's sight, a full collection walks only what requests made since (a
    # 10,000-line batch's validation ran 1.4x slower with every collection walking it).
    gc.collect()  # start-up's own garbage goes first: frozen, it would stay for good
    gc.freeze()
    yield
    await application.state.completions.close()
    await monitor.stop()


def create_app() -> FastAPI:
    """Build the application; no I/O happens until it starts (the Redis monitor)."""
    application = FastAPI(
        lifespan=_lifespan,
        title="genq",
        version="0.1.0",
        description="Text-generation jobs that keep answering when the model provider fails.",
        docs_url=None,  # api.docs serves /docs and /redoc without a CDN
        redoc_url=None,
    )
    install_docs(application)
    errors.install(application)
    application.add_middleware(BodyLimits)
    application.add_middleware(RequestIds)  # outermost: even a refused body has an id
    modules = (health, jobs, generate, openai_api, files, batches, circuits, metrics, status)
    routers = [r.router for r in modules]
    for router in routers:
        application.include_router(router)
    document_bearer(application, routers)
    return application


app = create_app()
