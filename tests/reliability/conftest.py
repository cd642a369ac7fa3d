"""Reliability tests run against real processes, with the integration suite's fixtures."""

from tests.integration.conftest import (  # noqa: F401 - fixtures, found by name
    api_url,
    celery_session_app,
    celery_worker_parameters,
    celery_worker_pool,
    genq_settings,
    r,
    sim,
    simulator,
)
