"""The baseline for genq's throughput benches: a bare Celery task making the same HTTP call.

Same broker settings as genq (``worker.app.celery_config``), same pool and concurrency;
the task body is what a hand-written Celery task would do: POST to the upstream with a
pooled ``requests.Session`` and write its answer to Redis. Run by bench/throughput_bench.py.

Same platform as genq: Celery as shipped, kombu's own Redis transport, the same
``celery_config`` (so the same broker options, pool and prefetch).
"""

from __future__ import annotations

import functools
import os
import time

import redis
import requests
from celery import Celery

from core.settings import get_settings
from worker.app import celery_config


def _config() -> dict[str, object]:
    return celery_config(get_settings())


app = Celery("genq-bench-bare")
app.add_defaults(_config)


@functools.cache
def _clients(pid: int) -> tuple[requests.Session, redis.Redis]:
    settings = get_settings()
    return requests.Session(), redis.Redis.from_url(settings.redis_url)


@app.task(name="bench.bare_generate", ignore_result=True)
def bare_generate(index: int, prompt: str) -> None:
    """POST the prompt to the HF-protocol upstream and store the text and timings."""
    settings = get_settings()
    session, client = _clients(os.getpid())
    started = time.time()
    resp = session.post(
        f"{str(settings.upstream_url).rstrip('/')}/models/{settings.upstream_model}",
        json={"inputs": prompt, "parameters": {"max_new_tokens": 16}},
        timeout=(settings.upstream_connect_timeout_s, settings.upstream_timeout_s),
    )
    resp.raise_for_status()
    text = resp.json()[0]["generated_text"]
    client.hset(
        f"bench:bare:{index}", mapping={"text": text, "started": started, "finished": time.time()}
    )


@app.task(name="bench.bare_constant", ignore_result=True)
def bare_constant(index: int, job: object) -> None:
    """Ignore the job it carries and record a constant answer (the fallback-drain baseline)."""
    _, client = _clients(os.getpid())
    now = time.time()
    client.hset(
        f"bench:bare:{index}", mapping={"text": "constant", "started": now, "finished": now}
    )


@app.task(name="bench.bare_lookup", ignore_result=True)
def bare_lookup(index: int, job: object) -> None:
    """The constant task plus one timed Redis GET (a cache miss), as genq's fallback reads
    the cache: the platform's own round-trip latency under the same drain."""
    _, client = _clients(os.getpid())
    started = time.perf_counter()
    client.get(f"bench:nothing:{index}")
    lookup_ms = (time.perf_counter() - started) * 1000
    now = time.time()
    fields = {"text": "constant", "started": now, "finished": now, "lookup_ms": lookup_ms}
    client.hset(f"bench:bare:{index}", mapping=fields)
