"""worker.fallback on a real redis-server: cache → excerpt → one final write, and what the
recorded answer says (source, why, and a latency_ms that counts the cache lookup)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from core import circuits
from core.contract import ContextDoc, GenerateRequest, JobMessage, JobResult
from core.records import JobStore
from core.settings import Settings
from worker import fallback
from worker.cache import CachedGeneration, ResultCache, cache_key
from worker.generation import GenerationService, breaker_factory
from worker.outcome import AlreadyFinal, Done
from worker.upstream import UpstreamTarget

pytestmark = pytest.mark.integration

TRICKY_TEXTS = [
    "plain",
    "",
    'quotes " and \\ backslashes / slashes',
    "lines\nand\ttabs\r\nand \x01 controls",
    "ünïcødé, 中文, emoji 🙂, combining é",
    "x" * 20_000,
]
DOC = ContextDoc(id="d1", text="Redis keeps the cache. The excerpt quotes documents.")


@pytest.fixture
def store(r: redis.Redis) -> JobStore:
    return JobStore(r, ttl_s=60)


@pytest.fixture
def cache(r: redis.Redis) -> ResultCache:
    return ResultCache(r, ttl_s=60, max_entry_bytes=1 << 20)


@pytest.fixture
def job_id(store: JobStore) -> str:
    job_id = uuid.uuid4().hex
    store.create(job_id, owner="o")
    return job_id


@pytest.fixture
def circuit_open(r: redis.Redis, genq_settings: Settings) -> Iterator[str]:
    """The configured target's circuit, forced open for the test."""
    name = UpstreamTarget.from_settings(genq_settings).name
    circuits.force_open(r, name, genq_settings.breaker_reset_timeout_s)
    yield name
    circuits.reset(r, name, genq_settings.breaker_reset_timeout_s)


def run(
    settings: Settings, store: JobStore, cache: ResultCache, job_id: str, request: GenerateRequest
) -> Done:
    """One run of the job by a service of its own (its breakers see the forced state),
    which must end it: a job (not a batch item) is never put back for an open circuit."""
    service = GenerationService(settings, store, cache, breaker_factory(settings))
    outcome = service.run(JobMessage(job_id=job_id, request=request))
    assert isinstance(outcome, Done | AlreadyFinal), outcome
    return outcome if isinstance(outcome, Done) else Done()


def cached(settings: Settings, cache: ResultCache, request: GenerateRequest, entry: str) -> None:
    target = UpstreamTarget.from_settings(settings)
    cache.put(
        cache_key(target.protocol, target.model, request),
        CachedGeneration(entry, target.model, {"prompt_tokens": 3, "completion_tokens": 40}, 1.0),
    )


@pytest.mark.usefixtures("circuit_open")
@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_a_cached_answer_is_recorded_as_it_was_cached_and_says_why(
    genq_settings: Settings, store: JobStore, cache: ResultCache, job_id: str, text: str
) -> None:
    """The record holds the entry's text, model and usage, and the circuit that refused."""
    request = GenerateRequest(prompt=f"p {job_id}", context=[DOC])
    cached(genq_settings, cache, request, text)
    outcome = run(genq_settings, store, cache, job_id, request)
    result = outcome.result
    assert result is not None
    assert (result.text, result.source, result.degraded) == (text, "cache", True)
    assert result.usage == {"prompt_tokens": 3, "completion_tokens": 40}
    assert result.fallback_reason == "circuit_forced_open"
    assert result.circuit == UpstreamTarget.from_settings(genq_settings).name
    assert result.retry_after == pytest.approx(genq_settings.breaker_reset_timeout_s, abs=1)
    record = store.get(job_id)
    assert record is not None
    assert record.result == result
    assert [a.outcome for a in record.attempts] == ["rejected"]


@pytest.mark.usefixtures("circuit_open")
def test_without_a_cached_answer_the_excerpt_answers(
    genq_settings: Settings, store: JobStore, cache: ResultCache, job_id: str
) -> None:
    """A miss: the context documents are quoted, with citations."""
    request = GenerateRequest(prompt=f"where is the cache {job_id}", context=[DOC])
    result = run(genq_settings, store, cache, job_id, request).result
    assert result is not None
    assert (result.source, result.degraded) == ("excerpt", True)
    assert "Redis keeps the cache" in result.text
    assert [c.id for c in result.citations] == ["d1"]
    assert store.get(job_id).result == result  # type: ignore[union-attr]


@pytest.mark.usefixtures("circuit_open")
def test_an_unreadable_entry_is_logged_and_the_excerpt_answers(
    genq_settings: Settings,
    r: redis.Redis,
    store: JobStore,
    cache: ResultCache,
    job_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An entry genq did not write reads as a miss (logged ``cache.corrupt``)."""
    caplog.set_level("WARNING", logger="worker.cache")
    request = GenerateRequest(prompt=f"where is the cache {job_id}", context=[DOC])
    target = UpstreamTarget.from_settings(genq_settings)
    r.set(cache_key(target.protocol, target.model, request), "not an entry")
    result = run(genq_settings, store, cache, job_id, request).result
    assert result is not None and result.source == "excerpt"
    assert "cache.corrupt" in caplog.text


@pytest.mark.usefixtures("circuit_open")
@pytest.mark.parametrize("policy", ["auto", "none"])
def test_with_nothing_to_answer_with_the_job_fails_service_unavailable(
    genq_settings: Settings, store: JobStore, cache: ResultCache, job_id: str, policy: str
) -> None:
    """No cached answer and no context (or ``fallback: none``): service_unavailable."""
    context = [DOC] if policy == "none" else []
    request = GenerateRequest(prompt=f"p {job_id}", context=context, fallback=policy)  # type: ignore[arg-type]
    if policy == "none":
        cached(genq_settings, cache, request, "cached but refused")
    outcome = run(genq_settings, store, cache, job_id, request)
    assert outcome.result is None and outcome.error is not None
    assert outcome.error.type == "service_unavailable"
    assert outcome.error.retry_after == pytest.approx(genq_settings.breaker_reset_timeout_s, abs=1)
    assert store.get(job_id).status == "failed"  # type: ignore[union-attr]


class SlowCache(ResultCache):
    """A real cache whose reads take 50 ms longer, as from a slow Redis."""

    def get(self, key: str) -> CachedGeneration | None:
        time.sleep(0.05)
        return super().get(key)


@pytest.mark.usefixtures("circuit_open")
@pytest.mark.parametrize("hit", [True, False])
def test_latency_ms_counts_the_cache_lookup(
    genq_settings: Settings, r: redis.Redis, store: JobStore, job_id: str, hit: bool
) -> None:
    """A fallback's latency_ms includes the time the cache lookup took, hit or miss."""
    slow = SlowCache(r, ttl_s=60, max_entry_bytes=1 << 20)
    request = GenerateRequest(prompt=f"where is the cache {job_id}", context=[DOC])
    if hit:
        cached(genq_settings, slow, request, "cached")
    result = run(genq_settings, store, slow, job_id, request).result
    assert result is not None
    assert result.source == ("cache" if hit else "excerpt")
    assert result.latency_ms >= 50


@pytest.mark.usefixtures("circuit_open")
def test_a_hit_builds_no_excerpt(
    genq_settings: Settings,
    store: JobStore,
    cache: ResultCache,
    job_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The order is cache, then excerpt: a cached answer costs no excerpt."""
    built: list[int] = []
    real = fallback.build_excerpt
    monkeypatch.setattr(fallback, "build_excerpt", lambda *a: built.append(1) or real(*a))
    request = GenerateRequest(prompt=f"where is the cache {job_id}", context=[DOC])
    cached(genq_settings, cache, request, "cached")
    assert run(genq_settings, store, cache, job_id, request).result.source == "cache"  # type: ignore[union-attr]
    assert built == []


@pytest.mark.usefixtures("circuit_open")
def test_an_answer_for_a_job_already_final_is_not_claimed(
    genq_settings: Settings, store: JobStore, cache: ResultCache, job_id: str
) -> None:
    """Another copy of the job answered first: its answer stands, and this run says none."""
    first = JobResult(text="first", model="m", source="upstream", degraded=False, latency_ms=1)
    store.finish(job_id, result=first)
    request = GenerateRequest(prompt="where is the cache", context=[DOC], cache="off")
    service = GenerationService(genq_settings, store, cache, breaker_factory(genq_settings))
    outcome = service.run(JobMessage(job_id=job_id, request=request))
    assert isinstance(outcome, AlreadyFinal)
    assert store.get(job_id).result == first  # type: ignore[union-attr]
