"""The generation service when the job store (Redis) is unreachable: job-store errors are
not the upstream's, and they go through the one retry policy, bounded."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from core import circuits
from core.contract import GenerateRequest, JobMessage
from core.records import JobStore
from core.settings import Settings
from devstack.redis import free_port
from worker.cache import ResultCache
from worker.generation import GenerationService, breaker_factory
from worker.outcome import Budget, Done, RetryAfter
from worker.upstream import UpstreamTarget

pytestmark = pytest.mark.integration


def service_with_store_down(settings: Settings, r: redis.Redis) -> GenerationService:
    """Breakers and cache on the session's Redis; job records on a port nothing listens on."""
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    cache = ResultCache(r, ttl_s=60, max_entry_bytes=1 << 16)
    return GenerationService(settings, JobStore(dead, ttl_s=60), cache, breaker_factory(settings))


def test_a_store_outage_is_retried_by_the_policy_and_never_counts_against_the_circuit(
    genq_settings: Settings, r: redis.Redis
) -> None:
    """mark_running fails: the job retries with a backed-off countdown while retries
    remain, then gives up; the circuit's failure count stays 0 and no upstream call is made."""
    model = f"simulator/store-{uuid.uuid4().hex[:8]}"
    name = UpstreamTarget.from_settings(genq_settings, model).name
    service = service_with_store_down(genq_settings, r)
    message = JobMessage(job_id=uuid.uuid4().hex, request=GenerateRequest(prompt="p", model=model))
    max_retries = genq_settings.max_retries
    retries = [service.run(message.model_copy(update={"retries": n})) for n in range(max_retries)]
    assert all(isinstance(o, RetryAfter) and o.budget is Budget.RETRIES for o in retries)
    delays = [o.delay_s for o in retries if isinstance(o, RetryAfter)]
    assert all(0 <= d <= genq_settings.retry_cap_s for d in delays)
    last = service.run(message.model_copy(update={"retries": max_retries}))
    assert isinstance(last, Done)
    assert last.error is not None and last.error.type == "storage_unavailable"
    assert circuits.snapshot(r, name)["failure_count"] == 0


def test_a_probe_whose_job_cannot_be_marked_running_hands_its_lease_back(
    genq_settings: Settings, r: redis.Redis
) -> None:
    """Half-open, the one probe is admitted but the store is down: the lease is released,
    so the next call can probe at once."""
    model = f"simulator/probe-{uuid.uuid4().hex[:8]}"
    name = UpstreamTarget.from_settings(genq_settings, model).name
    breaker = breaker_factory(genq_settings)(UpstreamTarget.from_settings(genq_settings, model))
    for _ in range(genq_settings.breaker_fail_max):
        with pytest.raises(RuntimeError), breaker.calling():
            raise RuntimeError("upstream down")
    assert circuits.snapshot(r, name)["state"] == "open"
    service = service_with_store_down(genq_settings, r)
    request = GenerateRequest(prompt="p", model=model)
    time.sleep(genq_settings.breaker_reset_timeout_s + 0.05)  # the open window ends
    outcome = service.run(JobMessage(job_id=uuid.uuid4().hex, request=request))
    assert isinstance(outcome, RetryAfter)
    report = circuits.snapshot(r, name)
    assert report["state"] == "half-open"
    assert report["probe_in_flight"] is False
