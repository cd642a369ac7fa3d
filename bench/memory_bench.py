"""Redis bytes per job (issue #12): what one job costs Redis while queued and once
answered, for a typical job and for the largest one the default limits let through.

Run: ``python -m bench.memory_bench``. Writes the "memory" section of docs/benchmarks.md.
``MEMORY USAGE`` of each key, with the message written as the API writes it (its record
and its Celery message, one transaction) and the answer as the worker records it (the
record with its result and attempt, and the cache entry).
"""

from __future__ import annotations

import uuid

from api.publish import TaskMessages
from bench.harness import bench_env, publisher, reset
from bench.report import machine, write_section
from core import keys
from core.contract import (
    QUEUE_INTERACTIVE,
    Attempt,
    GenerateRequest,
    JobMessage,
    JobResult,
)
from core.records import JobStore
from core.settings import Settings
from worker.cache import CachedGeneration, ResultCache, cache_key

DEFAULTS = Settings()


def typical() -> GenerateRequest:
    return GenerateRequest(
        prompt="Write a haiku about message queues", params={"max_new_tokens": 64}
    )


def largest() -> GenerateRequest:
    """The default limits' largest job: the longest prompt, the most context characters."""
    per_doc = DEFAULTS.max_context_chars // DEFAULTS.max_context_docs
    docs = [
        {"id": f"d{i}", "text": "w " * (per_doc // 2)} for i in range(DEFAULTS.max_context_docs)
    ]
    prompt = "q " * (DEFAULTS.max_prompt_chars // 2)
    return GenerateRequest(prompt=prompt, context=docs, params={"stop": ["s" * 256] * 8})


def measure(request: GenerateRequest, answer_chars: int) -> tuple[int, int]:
    """(bytes while queued, bytes once answered) of one job."""
    with bench_env() as env:
        reset(env)
        client = env.client()
        store = JobStore(client, DEFAULTS.job_ttl_s)
        job_id = uuid.uuid4().hex
        payload = JobMessage(job_id=job_id, request=request, owner="o" * 32)
        message = TaskMessages(publisher(env), QUEUE_INTERACTIVE).message(
            job_id, payload.model_dump(mode="json", exclude_defaults=True), f"[{job_id!r}]"
        )
        store.create(job_id, "o" * 32, enqueue=(QUEUE_INTERACTIVE, message))
        queued = _usage(client, [keys.job(job_id), QUEUE_INTERACTIVE])
        client.delete(QUEUE_INTERACTIVE)
        text = "x" * answer_chars
        result = JobResult(
            text=text,
            model="org/model",
            source="upstream",
            degraded=False,
            latency_ms=1234.5,
            usage={"prompt_tokens": 9, "completion_tokens": 64},
            finish_reason="stop",
        )
        cache = ResultCache(client, DEFAULTS.cache_ttl_s, DEFAULTS.cache_max_entry_bytes)
        key = cache_key("hf", "org/model", request, "o" * 32)
        entry = cache.entry(key, CachedGeneration(text, "org/model", result.usage, 0.0))
        store.finish(job_id, result=result, attempt=Attempt.now("succeeded"), also_set=entry)
        answered = _usage(client, [keys.job(job_id), key])
        return queued, answered


def _usage(client: object, names: list[str]) -> int:
    return sum(int(client.memory_usage(n, samples=0) or 0) for n in names)  # type: ignore[attr-defined]


def main() -> None:
    rows = [
        ("typical: a 34-character prompt, a 300-character answer", measure(typical(), 300)),
        (
            f"largest: a {DEFAULTS.max_prompt_chars:,}-character prompt, "
            f"{DEFAULTS.max_context_chars:,} characters of context, 8 stops of 256, "
            "a 64 kB answer",
            measure(largest(), 60_000),
        ),
    ]
    for name, (queued, answered) in rows:
        print(f"{name}: queued {queued:,} B, answered {answered:,} B")
    lines = [
        "## Redis bytes per job (issue #12)",
        "",
        f"{machine()}. `MEMORY USAGE` of a job's keys: while queued, its record and its "
        "Celery message; once answered, its record (result, attempt) and its cache entry "
        "(the message is gone). Default limits (`GENQ_MAX_PROMPT_CHARS`, "
        "`GENQ_MAX_CONTEXT_CHARS`, `GENQ_MAX_BODY_BYTES`, `GENQ_CACHE_MAX_ENTRY_BYTES`).",
        "",
        "| job | queued | answered |",
        "|---|---|---|",
        *[f"| {name} | {queued:,} B | {answered:,} B |" for name, (queued, answered) in rows],
    ]
    write_section("memory", "\n".join(lines))


if __name__ == "__main__":
    main()
