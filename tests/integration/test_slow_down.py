"""429 means "slower", not "down": on a real redis-server and the simulator, a 429 cuts
the call limit and is retried on its own budget without opening the circuit, unless the
limit is at its floor; an interactive job that gets no call slot in time is answered by
the fallback (``rate_limited``)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from core import capacity, circuits
from core.contract import ContextDoc, GenerateRequest, JobMessage, JobResult
from core.records import JobStore
from core.settings import Settings
from simulator.server import SimulatorServer
from tests.integration.conftest import genq_env, settings_for
from worker.cache import ResultCache
from worker.generation import GenerationService, breaker_factory
from worker.limiter import ConcurrencyLimiter
from worker.outcome import Budget, Done, Outcome, RetryAfter
from worker.upstream import UpstreamTarget

# The breakers reach Redis through the process's settings: the session's test Redis.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("genq_settings")]

DOC = ContextDoc(id="d1", text="The provider asked for fewer calls at once.")


def service_for(redis_url: str, sim: SimulatorServer, **env: str) -> GenerationService:
    settings = settings_for(genq_env(redis_url, sim.url, **env))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    cache = ResultCache(client, ttl_s=60, max_entry_bytes=1 << 16)
    store = JobStore(client, ttl_s=60)
    limiter = ConcurrencyLimiter.from_settings(settings, client)
    return GenerationService(settings, store, cache, breaker_factory(settings), limiter=limiter)


def new_job(service: GenerationService, model: str) -> JobMessage:
    job_id = uuid.uuid4().hex
    service.store.create(job_id, owner="o")
    request = GenerateRequest(prompt=f"p {job_id}", model=model, context=[DOC])
    return JobMessage(job_id=job_id, request=request)


def run_until_final(service: GenerationService, message: JobMessage) -> list[Outcome]:
    """Run the job as its task would: again after each retry, the 429s counted apart."""
    outcomes: list[Outcome] = []
    while True:
        outcome = service.run(message)
        outcomes.append(outcome)
        if not isinstance(outcome, RetryAfter):
            return outcomes
        spent = getattr(message, outcome.budget.value) + 1
        message = message.model_copy(update={outcome.budget.value: spent})


def budget(outcome: Outcome) -> Budget | None:
    return outcome.budget if isinstance(outcome, RetryAfter) else None


def result(outcome: Outcome) -> JobResult | None:
    return outcome.result if isinstance(outcome, Done) else None


def circuit_of(service: GenerationService, model: str, r: redis.Redis) -> dict[str, object]:
    name = UpstreamTarget.from_settings(service.settings, model).name
    return {**circuits.snapshot(r, name), "limit": capacity.snapshot(r, name)}


def test_429s_above_the_floor_slow_down_without_opening_the_circuit(
    redis_url: str, sim: SimulatorServer, r: redis.Redis
) -> None:
    """Six 429s in a row (fail_max is 4, max_retries 2): the job still gets its answer,
    the circuit stays closed with no failure counted, and the limit was cut."""
    service = service_for(redis_url, sim, GENQ_RETRY_BASE_S="0.01")
    model = f"slow-{uuid.uuid4().hex[:8]}"
    sim.configure(script=[{"status": 429, "retry_after": 0}] * 6)
    outcomes = run_until_final(service, new_job(service, model))
    assert [budget(o) for o in outcomes] == [Budget.THROTTLED] * 6 + [None]
    final = result(outcomes[-1])
    assert final is not None and final.source == "upstream"
    circuit = circuit_of(service, model, r)
    assert (circuit["state"], circuit["failure_count"]) == ("closed", 0)
    limit = circuit["limit"]
    assert isinstance(limit, dict) and limit["throttled"] == 6 and limit["cuts"] >= 1


def test_429s_at_the_floor_open_the_circuit(
    redis_url: str, sim: SimulatorServer, r: redis.Redis
) -> None:
    """With the limit at its floor, the provider refuses even one call at a time: each
    429 counts, and fail_max of them open the circuit."""
    floor = {"GENQ_UPSTREAM_MIN_IN_FLIGHT": "1", "GENQ_UPSTREAM_INITIAL_IN_FLIGHT": "1"}
    service = service_for(redis_url, sim, GENQ_RETRY_BASE_S="0.01", **floor)
    model = f"floor-{uuid.uuid4().hex[:8]}"
    sim.configure(mode="rate_limit", retry_after_s=0)
    outcomes = run_until_final(service, new_job(service, model))
    final = result(outcomes[-1])
    assert final is not None and final.source == "excerpt"
    circuit = circuit_of(service, model, r)
    assert circuit["state"] == "open"
    assert len(outcomes) == 4 + 1  # four 429s open it; the fifth run is refused


def test_an_interactive_job_without_a_slot_in_time_is_answered_rate_limited(
    redis_url: str, sim: SimulatorServer, r: redis.Redis
) -> None:
    """Every slot is taken (a fixed limit of 1, held elsewhere): after waiting its budget
    the job is answered from its context, and says why; no call was made."""
    env = {
        "GENQ_UPSTREAM_LIMIT": "fixed",
        "GENQ_UPSTREAM_MAX_IN_FLIGHT": "1",
        "GENQ_INTERACTIVE_SLOT_WAIT_S": "0.3",
    }
    service = service_for(redis_url, sim, **env)
    model = f"busy-{uuid.uuid4().hex[:8]}"
    target = UpstreamTarget.from_settings(service.settings, model).name
    held = service.limiter.acquire(target, 0)
    assert held is not None
    answer = result(service.run(new_job(service, model)))
    assert answer is not None
    assert (answer.source, answer.degraded, answer.fallback_reason) == (
        "excerpt",
        True,
        "rate_limited",
    )
    assert sim.stats()["calls"] == 0
    limit = capacity.snapshot(r, target)
    assert limit is not None and limit["wait_timeouts"] == 1 and limit["waited_s"] >= 0.3


def test_settings_give_the_slot_waits_a_place_in_the_longest_attempt() -> None:
    """The batch wait is part of the longest attempt that the visibility timeout covers."""
    settings = Settings(batch_slot_wait_s=100)
    assert settings.longest_attempt_s >= 100 + settings.longest_call_s


def test_an_interactive_job_nothing_else_can_answer_waits_on_for_a_slot(
    redis_url: str, sim: SimulatorServer, r: redis.Redis
) -> None:
    """No context and no cached answer: past its short wait (0.3 s) the job is not failed
    rate_limited but waits on, first, and the upstream answers once the slot held
    elsewhere comes back (1 s); without a free slot in GENQ_BATCH_SLOT_WAIT_S in all, it
    fails rate_limited."""
    env = {
        "GENQ_UPSTREAM_LIMIT": "fixed",
        "GENQ_UPSTREAM_MAX_IN_FLIGHT": "1",
        "GENQ_INTERACTIVE_SLOT_WAIT_S": "0.3",
        "GENQ_BATCH_SLOT_WAIT_S": "2",
    }
    service = service_for(redis_url, sim, **env)
    model = f"patient-{uuid.uuid4().hex[:8]}"
    target = UpstreamTarget.from_settings(service.settings, model).name
    held = service.limiter.acquire(target, 0)
    assert held is not None
    job = new_job(service, model)
    bare = job.model_copy(update={"request": job.request.model_copy(update={"context": []})})
    threading.Timer(1.0, service.limiter.release, args=(held,)).start()
    started = time.monotonic()
    answer = result(service.run(bare))
    assert answer is not None and answer.source == "upstream"
    assert 0.9 < time.monotonic() - started < 2.0
    held = service.limiter.acquire(target, 0)  # held for good now
    assert held is not None
    second = new_job(service, model)
    bare = second.model_copy(update={"request": GenerateRequest(prompt="alone", model=model)})
    outcome = service.run(bare)
    assert isinstance(outcome, Done) and outcome.error is not None
    assert outcome.error.type == "rate_limited"
    assert sim.stats()["calls"] == 1
