"""Latency of the two fallback answers: ``build_excerpt`` and a result-cache hit.

Run: ``python -m bench.fallback_micro_bench`` (``make bench`` runs every bench). Prints
p50/p99 and writes the "fallback_micro" section of docs/benchmarks.md. Baseline: a raw
Redis ``GET`` of the same entry on the same redis-server, measured in the same run.
Targets: ``build_excerpt`` p99 < 5 ms on 50 documents × 2,000 chars (and on the largest
context a job may carry); ``ResultCache.get`` within 2 × a raw ``GET``. The in-process
dict row is what a per-process LRU would cost.

The corpus is synthetic but shaped like English: Zipf-distributed words, stop words at
their usual rate, sentences of 8-24 words in paragraphs, so prompt terms hit often.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable

import redis

from bench.report import machine, write_section
from core.contract import ContextDoc, GenerateRequest
from devstack.redis import RedisProcess, ensure_redis_server
from worker.cache import CachedGeneration, ResultCache, cache_key
from worker.excerpt import build_excerpt

DOCS, DOC_CHARS, MAX_CHARS = 50, 2_000, 1_200
RUNS, WARMUP = 2_000, 100
TARGET_P99_MS = 5.0
TARGET_CACHE_RATIO = 2.0  # p50 of ResultCache.get on a hit, over a raw GET
_STOP = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "with", "on"]


def vocabulary(rng: random.Random, size: int = 3_000) -> list[str]:
    """Pronounceable pseudo-words, most frequent first."""
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    words = {"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(size * 2)}
    return sorted(words)[:size]


def corpus(seed: int = 7) -> tuple[list[ContextDoc], list[str]]:
    """50 documents of 2,000 chars and the vocabulary they were drawn from."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    docs = []
    for i in range(DOCS):
        paragraphs, size = [], 0
        while size < DOC_CHARS:
            sentences = []
            for _ in range(rng.randint(2, 6)):
                n = rng.randint(8, 24)
                words = [
                    rng.choice(_STOP) if rng.random() < 0.4 else w
                    for w in rng.choices(vocab, weights, k=n)
                ]
                sentences.append(" ".join(words).capitalize() + rng.choice(".....?!"))
            paragraphs.append(" ".join(sentences))
            size += len(paragraphs[-1]) + 2
        text = "\n\n".join(paragraphs)[:DOC_CHARS]
        docs.append(ContextDoc(id=f"doc-{i}", text=text, title=f"Doc {i}", url=f"https://d/{i}"))
    return docs, vocab


def percentiles(call: Callable[[], object], runs: int = RUNS) -> tuple[float, float]:
    """p50 and p99 of ``call`` in milliseconds, after a warm-up."""
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000.0)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def excerpt_rows(docs: list[ContextDoc], vocab: list[str]) -> list[tuple[str, float, float]]:
    """build_excerpt on a short prompt, a long one, one with no term in common, and on
    the largest context a job may carry (50 × 100,000 chars)."""
    rng = random.Random(11)
    short = "How does the " + " ".join(rng.sample(vocab[20:400], 7)) + " work?"
    long = " ".join(rng.sample(vocab, 300))
    huge = [d.model_copy(update={"text": (d.text + "\n\n") * 50}) for d in docs]
    cases = [
        ("build_excerpt, 7-term prompt", short, docs),
        ("build_excerpt, 300-term prompt", long, docs),
        ("build_excerpt, no term in common", "zzqx wwvy", docs),
        ("build_excerpt, 7 terms, 50 × 100,000 chars", short, huge),
    ]
    rows = []
    for name, prompt, context in cases:
        p50, p99 = percentiles(functools.partial(build_excerpt, prompt, context, MAX_CHARS))
        rows.append((name, p50, p99))
    return rows


def cache_rows(url: str, docs: list[ContextDoc]) -> list[tuple[str, float, float]]:
    """A raw GET (baseline), ResultCache.get on a hit, and a dict lookup (an LRU's cost)."""
    client = redis.Redis.from_url(url, socket_timeout=2, decode_responses=True)
    cache = ResultCache(client, ttl_s=3_600, max_entry_bytes=64 * 1024)
    key = cache_key("hf", "bench-model", GenerateRequest(prompt="bench", context=docs[:3]))
    entry = CachedGeneration("x" * 2_000, "bench-model", {"completion_tokens": 400}, time.time())
    if not cache.put(key, entry):
        raise RuntimeError("could not store the bench entry")
    local = {key: entry}
    return [
        ("redis GET, raw (baseline)", *percentiles(lambda: client.get(key))),
        ("ResultCache.get, hit", *percentiles(lambda: cache.get(key))),
        ("in-process dict (LRU candidate)", *percentiles(lambda: local.get(key))),
    ]


def main() -> None:
    docs, vocab = corpus()
    excerpts = excerpt_rows(docs, vocab)
    server = RedisProcess(ensure_redis_server(lambda _: None))
    server.start()
    try:
        caches = cache_rows(server.url, docs)
    finally:
        server.stop()
    baseline = caches[0][1]
    table = [
        "## Fallback answers: excerpt and cache hit (micro)",
        "",
        f"{machine()}. {RUNS} calls each after {WARMUP} warm-up; {DOCS} documents × "
        f"{DOC_CHARS} chars, excerpts bounded at {MAX_CHARS} chars; a 2,000-char cached "
        "entry on a local redis-server. Ratio: p50 / p50 of a raw Redis GET in this run.",
        "",
        "| operation | p50 ms | p99 ms | p50 / raw GET | target |",
        "|---|---|---|---|---|",
    ]
    for name, p50, p99 in excerpts + caches:
        target = ""
        if name.startswith("build_excerpt"):
            met = "met" if p99 < TARGET_P99_MS else "NOT met"
            target = f"p99 < {TARGET_P99_MS:g} ms: {met}"
        elif name.startswith("ResultCache"):
            met = "met" if p50 <= TARGET_CACHE_RATIO * baseline else "NOT met"
            target = f"≤ {TARGET_CACHE_RATIO:g} × raw GET: {met}"
        table.append(f"| {name} | {p50:.4f} | {p99:.4f} | {p50 / baseline:.3f} | {target} |")
        print(f"{name:44} p50 {p50:8.4f} ms  p99 {p99:8.4f} ms  {p50 / baseline:6.2f}x GET")
    write_section("fallback_micro", "\n".join(table))


if __name__ == "__main__":
    main()
