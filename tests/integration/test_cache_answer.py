"""A cached answer looked up and recorded in one Lua round trip (JobStore.finish_from_cache):
the record reads exactly as the Python path would have written it. Without a readable
entry, the answer the worker prepared instead (an excerpt) is recorded in that round trip."""

from __future__ import annotations

import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core._records_scripts import FINISH_FROM_CACHE
from core.contract import (
    Attempt,
    ContextDoc,
    GenerateRequest,
    JobMessage,
    JobResult,
    JobStatus,
)
from core.records import CacheMiss, JobStore, utcnow
from core.settings import Settings
from worker import breaker, generation
from worker.cache import CachedGeneration, ResultCache, cache_key
from worker.generation import GenerationService, Outcome, breaker_factory
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


@pytest.fixture
def client(r: redis.Redis) -> redis.Redis:
    """The session's redis-server (conftest's decoded client)."""
    return r


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    return JobStore(client, ttl_s=60)


@pytest.fixture
def cache(client: redis.Redis) -> ResultCache:
    return ResultCache(client, ttl_s=60, max_entry_bytes=1 << 20)


@pytest.fixture
def job_id(store: JobStore) -> str:
    job_id = uuid.uuid4().hex
    store.create(job_id, owner="o")
    return job_id


@pytest.fixture
def key() -> str:
    return f"genq:test:cache:{uuid.uuid4().hex}"


def fields(**extra: object) -> JobResult:
    """What the service passes: everything but text, model and usage."""
    values: dict[str, object] = {
        "text": "",
        "model": "",
        "source": "cache",
        "degraded": True,
        "latency_ms": 0.25,
        "fallback_reason": "circuit_open",
        "circuit": "hf~sim/models/m~m",
        "retry_after": 1.5,
        **extra,
    }
    return JobResult.model_validate(values)


def run_with_circuit_open(
    settings: Settings,
    client: redis.Redis,
    store: JobStore,
    cache: ResultCache,
    job_id: str,
    request: GenerateRequest,
) -> Outcome:
    """One run of the job by the service, with its target's circuit forced open."""
    service = GenerationService(settings, store, cache, breaker_factory(settings))
    target = UpstreamTarget.from_settings(settings)
    breaker.force_open(client, target.name)
    try:
        return service.run(JobMessage(job_id=job_id, request=request))
    finally:
        breaker.reset(client, target.name)


def rejected() -> Attempt:
    return Attempt.model_validate({"at": utcnow(), "outcome": "rejected", "error_type": "x"})


@pytest.mark.parametrize("text", TRICKY_TEXTS)
@pytest.mark.parametrize("usage", [None, {}, {"prompt_tokens": 3, "completion_tokens": 40}])
def test_the_record_holds_the_entry_and_the_given_fields(
    store: JobStore,
    cache: ResultCache,
    job_id: str,
    key: str,
    text: str,
    usage: dict[str, int] | None,
) -> None:
    cache.put(key, CachedGeneration(text, "model-a", usage, 1_700_000_000.5))
    attempt = rejected()
    recorded = store.finish_from_cache(job_id, key, fields(), attempt, attempt.at)
    expected = fields(text=text, model="model-a", usage=usage)
    assert recorded == expected
    record = store.get(job_id)
    assert record is not None
    assert record.status == JobStatus.SUCCEEDED
    assert record.result == expected
    assert record.attempts == [attempt]
    assert record.started_at == attempt.at
    assert record.finished_at is not None


def test_no_entry_records_nothing(store: JobStore, job_id: str, key: str) -> None:
    assert store.finish_from_cache(job_id, key, fields(), rejected(), utcnow()) is (
        CacheMiss.NO_ENTRY
    )
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.attempts) == (JobStatus.QUEUED, [])


def test_a_final_or_missing_job_is_left_alone(
    store: JobStore, cache: ResultCache, job_id: str, key: str
) -> None:
    cache.put(key, CachedGeneration("cached", "m", None, 1.0))
    first = JobResult(text="first", model="m", source="upstream", degraded=False, latency_ms=1)
    store.finish(job_id, result=first)
    assert store.finish_from_cache(job_id, key, fields(), None, utcnow()) is CacheMiss.JOB_FINAL
    assert store.get(job_id).result == first  # type: ignore[union-attr]
    gone = uuid.uuid4().hex
    assert store.finish_from_cache(gone, key, fields(), None, utcnow()) is CacheMiss.JOB_FINAL
    assert store.get(gone) is None


def excerpt_answer() -> JobResult:
    return JobResult.model_validate(
        {
            "text": "an excerpt",
            "model": "m",
            "source": "excerpt",
            "degraded": True,
            "latency_ms": 0.5,
            "fallback_reason": "circuit_open",
            "citations": [{"id": "d1", "title": "T"}],
        }
    )


def test_no_entry_records_the_other_answer_in_the_same_call(
    store: JobStore, client: redis.Redis, job_id: str, key: str
) -> None:
    other, attempt = excerpt_answer(), rejected()
    client.script_load(FINISH_FROM_CACHE)  # a fresh server would count a NOSCRIPT first
    client.config_resetstat()
    recorded = store.finish_from_cache(job_id, key, fields(), attempt, attempt.at, other)
    assert recorded is other
    assert client.info("commandstats")["cmdstat_evalsha"]["calls"] == 1
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.result, record.attempts) == (
        JobStatus.SUCCEEDED,
        other,
        [attempt],
    )
    assert record.started_at == attempt.at and record.finished_at is not None


def test_a_readable_entry_wins_over_the_other_answer(
    store: JobStore, cache: ResultCache, job_id: str, key: str
) -> None:
    cache.put(key, CachedGeneration("cached", "m", None, 1.0))
    recorded = store.finish_from_cache(job_id, key, fields(), None, utcnow(), excerpt_answer())
    assert recorded == fields(text="cached", model="m")
    assert store.get(job_id).result == recorded  # type: ignore[union-attr]


def test_an_unreadable_entry_is_logged_and_the_other_answer_recorded(
    store: JobStore,
    client: redis.Redis,
    job_id: str,
    key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client.set(key, "not an entry")
    other = excerpt_answer()
    assert store.finish_from_cache(job_id, key, fields(), None, utcnow(), other) is other
    assert store.get(job_id).result == other  # type: ignore[union-attr]
    assert "cache.corrupt" in caplog.text


def test_a_final_job_takes_no_other_answer(store: JobStore, job_id: str, key: str) -> None:
    first = JobResult(text="first", model="m", source="upstream", degraded=False, latency_ms=1)
    store.finish(job_id, result=first)
    recorded = store.finish_from_cache(job_id, key, fields(), None, utcnow(), excerpt_answer())
    assert recorded is CacheMiss.JOB_FINAL
    assert store.get(job_id).result == first  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        '["a list"]',
        '{"text": 1, "model": "m", "created_at": 1}',
        '{"text": "t", "model": "m"}',
        '{"text": "t", "model": "m", "created_at": 1, "usage": {"n": 1.5}}',
        '{"text": "t", "model": "m", "created_at": 1, "usage": "many"}',
        # Valid JSON that Lua's decoder refuses: a lone surrogate (no result can hold it).
        '{"created_at":1,"model":"m","text":"\\ud800 half a pair","usage":null}',
    ],
)
def test_an_entry_lua_cannot_read_is_left_to_python(
    store: JobStore, client: redis.Redis, job_id: str, key: str, raw: str
) -> None:
    client.set(key, raw)
    assert store.finish_from_cache(job_id, key, fields(), rejected(), utcnow()) is (
        CacheMiss.UNREADABLE
    )
    assert store.get(job_id).status == JobStatus.QUEUED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text_bytes",
    [b"\xff bad byte", b"\xed\xa0\x80 encoded surrogate", b"\xc0\xaf overlong", b"cut \xe2\x82"],
)
def test_an_entry_that_is_not_utf8_is_unreadable(
    store: JobStore, redis_url: str, job_id: str, key: str, text_bytes: bytes
) -> None:
    """cjson would copy the bytes into the record, which no client could then read."""
    raw_client = redis.Redis.from_url(redis_url)
    raw_client.set(key, b'{"created_at":1,"model":"m","text":"' + text_bytes + b'"}')
    raw_client.close()
    assert store.finish_from_cache(job_id, key, fields(), rejected(), utcnow()) is (
        CacheMiss.UNREADABLE
    )
    assert store.get(job_id).status == JobStatus.QUEUED  # type: ignore[union-attr]
    other = excerpt_answer()
    assert store.finish_from_cache(job_id, key, fields(), None, utcnow(), other) is other
    assert store.get(job_id).result == other  # type: ignore[union-attr]


def test_unreachable_redis_is_a_miss(job_id: str) -> None:
    down = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    store = JobStore(down, ttl_s=60)
    assert store.finish_from_cache(job_id, "k", fields(), None, utcnow()) is CacheMiss.NO_ENTRY
    # The other answer was not recorded either: the service's retrying write must.
    other = excerpt_answer()
    assert store.finish_from_cache(job_id, "k", fields(), None, utcnow(), other) is (
        CacheMiss.NO_ENTRY
    )


def test_the_service_answers_past_an_unreadable_entry(
    genq_settings: Settings,
    client: redis.Redis,
    store: JobStore,
    cache: ResultCache,
    job_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Circuit open, the cache entry is not one genq wrote: the excerpt answers."""
    doc = ContextDoc(id="d1", text="Redis keeps the cache. The excerpt quotes documents.")
    request = GenerateRequest(prompt=f"where is the cache {job_id}", context=[doc])
    target = UpstreamTarget.from_settings(genq_settings)
    client.set(cache_key(target.protocol, target.model, request), "not an entry")
    outcome = run_with_circuit_open(genq_settings, client, store, cache, job_id, request)
    assert outcome.result is not None
    assert outcome.result.source == "excerpt"
    assert store.get(job_id).result == outcome.result  # type: ignore[union-attr]
    assert "cache.corrupt" in caplog.text


def test_a_bytes_client_reads_the_result_too(
    redis_url: str, cache: ResultCache, job_id: str, key: str
) -> None:
    raw_client = redis.Redis.from_url(redis_url)  # replies as bytes
    cache.put(key, CachedGeneration("cached", "m", None, 1.0))
    recorded = JobStore(raw_client, ttl_s=60).finish_from_cache(
        job_id, key, fields(), None, utcnow()
    )
    assert recorded == fields(text="cached", model="m")
    raw_client.close()


@pytest.mark.parametrize(
    ("doc_chars", "cached", "source", "excerpts_built"),
    [
        (2_000, True, "cache", 1),  # small context: excerpted first, the cache wins
        (2_000, False, "excerpt", 1),
        (30_000, True, "cache", 0),  # large context: the cache is read first
        (30_000, False, "excerpt", 1),
    ],
)
def test_small_context_is_excerpted_before_the_lookup_large_context_after(
    genq_settings: Settings,
    client: redis.Redis,
    store: JobStore,
    cache: ResultCache,
    job_id: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    doc_chars: int,
    cached: bool,
    source: str,
    excerpts_built: int,
) -> None:
    built: list[int] = []

    def counting_build_excerpt(*args: object, **kwargs: object) -> object:
        built.append(1)
        return generation_build_excerpt(*args, **kwargs)  # type: ignore[arg-type]

    generation_build_excerpt = generation.build_excerpt
    monkeypatch.setattr(generation, "build_excerpt", counting_build_excerpt)
    text = ("Redis keeps the cache. " * (doc_chars // 23 + 1))[:doc_chars]
    request = GenerateRequest(
        prompt=f"where is the cache {job_id}", context=[ContextDoc(id="d1", text=text)]
    )
    target = UpstreamTarget.from_settings(genq_settings)
    if cached:
        key = cache_key(target.protocol, target.model, request)
        cache.put(key, CachedGeneration("cached", target.model, None, 1.0))
    caplog.set_level("INFO", logger="worker.generation")
    outcome = run_with_circuit_open(genq_settings, client, store, cache, job_id, request)
    assert outcome.result is not None and outcome.result.source == source
    assert store.get(job_id).result == outcome.result  # type: ignore[union-attr]
    assert len(built) == excerpts_built
    served = [r for r in caplog.records if r.getMessage() == "fallback.served"]
    assert len(served) == 1


def test_an_answer_for_a_job_already_final_is_not_claimed(
    genq_settings: Settings, client: redis.Redis, store: JobStore, cache: ResultCache, job_id: str
) -> None:
    """Another copy of the job answered first: its answer stands, and this run says none."""
    first = JobResult(text="first", model="m", source="upstream", degraded=False, latency_ms=1)
    store.finish(job_id, result=first)
    doc = ContextDoc(id="d1", text="Redis keeps the cache.")
    request = GenerateRequest(prompt="where is the cache", context=[doc], cache="off")
    outcome = run_with_circuit_open(genq_settings, client, store, cache, job_id, request)
    assert outcome.result is None and outcome.error is None
    assert store.get(job_id).result == first  # type: ignore[union-attr]
