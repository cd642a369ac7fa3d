"""Two copies of one job (a redelivery while the first copy still runs): only one calls
the upstream; the other comes back later instead."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from core.contract import GenerateRequest, JobMessage
from core.records import LEASE_MS, JobStore
from core.settings import Settings
from simulator.server import SimulatorServer
from worker.cache import ResultCache
from worker.generation import GenerationService, breaker_factory
from worker.outcome import AlreadyFinal, Budget, Done, Outcome, RetryAfter

pytestmark = pytest.mark.integration


def test_a_redelivered_copy_does_not_call_the_upstream_while_the_first_runs(
    genq_settings: Settings, r: redis.Redis, sim: SimulatorServer
) -> None:
    """The first copy holds the running lease through a 1.5 s call; the second, started
    mid-call, retries after the lease's length and makes no call; one answer is recorded."""
    sim.configure(latency_ms=1500)
    store = JobStore(r, ttl_s=60)
    cache = ResultCache(r, ttl_s=60, max_entry_bytes=1 << 16)
    services = [
        GenerationService(genq_settings, store, cache, breaker_factory(genq_settings))
        for _ in range(2)
    ]
    job_id = uuid.uuid4().hex
    store.create(job_id, owner="o")
    message = JobMessage(job_id=job_id, request=GenerateRequest(prompt=f"p {job_id}"))
    outcomes: list[Outcome] = []
    first = threading.Thread(target=lambda: outcomes.append(services[0].run(message)))
    first.start()
    time.sleep(0.5)
    second = services[1].run(message)
    first.join(timeout=10)
    assert second == RetryAfter(LEASE_MS / 1000, Budget.LEASE_WAITS)
    first_done = outcomes[0]
    assert isinstance(first_done, Done) and first_done.result is not None
    assert first_done.result.source == "upstream"
    assert sim.stats()["calls"] == 1
    assert isinstance(services[1].run(message), AlreadyFinal)  # done now: nothing more to do
    assert sim.stats()["calls"] == 1
