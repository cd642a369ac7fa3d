"""Issue #4's benches: draining a queue on fallback answers while the circuit is open, and
the closed-circuit cost of genq (breaker + cache write) at 50 ms upstream latency.

Run: ``python -m bench.fallback_bench``. Writes the "fallback" section of
docs/benchmarks.md. Everything runs against one redis-server and one simulator.

- Open-circuit drain: N jobs queued before the worker starts, half answered from the
  cache and half by an excerpt of five context documents (2,000 chars each), with the
  circuit forced open (the rejection path is the same as a tripped circuit's).
  Baseline: a bare Celery task that records a constant, given the same job messages,
  same pool and concurrency, on the same platform (Celery and kombu's Redis transport
  as shipped, the same broker options). Medians of ``OPEN_REPEATS`` alternating runs.
  Target: genq ≥ 0.75 × bare, and the fallback latency (the ``latency_ms`` of each
  degraded result, cache lookup included) p99 < 5 ms.
- The fallback latency again with jobs arriving at a steady half of that drain rate into
  a running worker, against the bare task's one timed GET at the same rate: the
  latency of the path rather than of a saturated worker's queue for the GIL.
- The same open-circuit drain, paired: genq and the bare task drain at the same time,
  each worker with its own redis-server, and both rates are taken over the window in
  which both were draining. This VM's speed drifts by ±20% within minutes; sequential
  runs see it as noise in the ratio, paired runs see it hit both sides alike.
- Closed circuit: ``genq.generate`` (breaker admit + record, cache write, job record)
  against the bare task making the same HTTP call, 50 ms simulator latency. Target ≥ 0.9.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time

from bench.fallback_micro_bench import corpus
from bench.harness import (
    CONCURRENCY,
    POOL,
    Env,
    bare_times,
    bench_env,
    drain_rate_bare,
    drain_rate_genq,
    genq_times,
    overlap_rates,
    publish_bare,
    publish_genq,
    reset,
    wait_drained,
    worker,
)
from bench.report import machine, write_section
from bench.throughput_bench import REPEATS, alternate, bare_rate, genq_rate
from core import circuits
from core.contract import GenerateRequest
from worker.cache import CachedGeneration, ResultCache, cache_key
from worker.upstream import UpstreamTarget

# Five English-like documents of 2,000 chars (Zipf-distributed words, the same synthetic
# corpus as bench/fallback_micro_bench.py): what a retrieval-augmented job carries.
_DOCS, _VOCAB = corpus()
CONTEXT = [doc.model_dump(exclude_none=True) for doc in _DOCS[:5]]
OPEN_REPEATS = 5
PAIRED_REPEATS = 3
PACED_N = 4000
PACED_REPEATS = 2


def _requests(n: int) -> list[dict[str, object]]:
    half = n // 2
    cached: list[dict[str, object]] = [{"prompt": f"cached prompt {i}"} for i in range(half)]
    excerpt: list[dict[str, object]] = [
        {
            "prompt": f"how does {_VOCAB[20 + i % 300]} relate to {_VOCAB[40 + i % 200]}",
            "context": CONTEXT,
        }
        for i in range(n - half)
    ]
    return [job for pair in zip(cached, excerpt, strict=False) for job in pair]


def prime_cache(env: Env, requests: list[dict[str, object]]) -> None:
    settings = env.settings()
    target = UpstreamTarget.from_settings(settings)
    cache = ResultCache(env.client(), settings.cache_ttl_s, settings.cache_max_entry_bytes)
    for body in requests:
        if "context" not in body:
            key = cache_key(target.protocol, target.model, GenerateRequest.model_validate(body))
            cache.put(key, CachedGeneration("a cached answer", target.model, None, time.time()))


def open_drain(env: Env, n: int, latencies: list[float]) -> float:
    """Jobs/s for n fallback-answered jobs; their fallback latencies go to ``latencies``."""
    ids = _queue_open_genq(env, n)
    with worker(env, "worker.app", POOL, CONCURRENCY):
        rate = drain_rate_genq(env, ids, timeout_s=600)
    latencies.extend(_fallback_latencies(env, ids))
    return rate


def _fallback_latencies(env: Env, ids: list[str]) -> list[float]:
    pipe = env.client().pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(f"genq:job:{job_id}", "result")
    results = [json.loads(r) for r in pipe.execute() if r]
    return [r["latency_ms"] for r in results if r["degraded"]]


def _open_circuit(env: Env, bodies: list[dict[str, object]]) -> None:
    """A clean Redis, the cache primed for half the jobs, the circuit forced open."""
    reset(env)
    prime_cache(env, bodies)
    settings = env.settings()
    name = UpstreamTarget.from_settings(settings).name
    circuits.force_open(env.client(), name, settings.breaker_reset_timeout_s)


def _queue_open_genq(env: Env, n: int) -> list[str]:
    bodies = _requests(n)
    _open_circuit(env, bodies)
    return publish_genq(env, n, bodies)


def paced_fallback(env: Env, n: int, rate: float) -> list[float]:
    """Fallback latencies of ``n`` jobs arriving at ``rate`` jobs/s into a running worker
    (after 200 warm-up jobs, not counted): the latency of the path, not of a backlog."""
    bodies = _requests(n)
    _open_circuit(env, bodies)
    with worker(env, "worker.app", POOL, CONCURRENCY):
        publish_genq(env, 200, bodies[:200])
        wait_drained(env, 600)
        ids = publish_genq(env, n, bodies, rate=rate)
        wait_drained(env, 600)
    return sorted(_fallback_latencies(env, ids))


def paced_bare_lookups(env: Env, n: int, rate: float) -> list[float]:
    """The bare task's one timed GET with tasks arriving at ``rate``/s, as above."""
    reset(env)
    with worker(env, "bench.bare_app", POOL, CONCURRENCY):
        publish_bare(env, 200, "bench.bare_lookup", payloads=_requests(200))
        wait_drained(env, 600)
        reset(env)
        ids = publish_bare(env, n, "bench.bare_lookup", payloads=_requests(n), rate=rate)
        wait_drained(env, 600)
    return _lookup_ms(env, ids)


def paired_open(genq_env: Env, bare_env: Env, n: int) -> float:
    """genq / bare over one window in which both drain at once, each worker with its own
    redis-server and simulator: whatever the VM does then, it does to both."""
    genq_ids = _queue_open_genq(genq_env, n)
    reset(bare_env)
    bare_ids = publish_bare(bare_env, n, "bench.bare_constant", payloads=_requests(n))
    with (
        worker(genq_env, "worker.app", POOL, CONCURRENCY),
        worker(bare_env, "bench.bare_app", POOL, CONCURRENCY),
    ):
        wait_drained(genq_env, 600)
        wait_drained(bare_env, 600)
    genq, bare = overlap_rates(genq_times(genq_env, genq_ids), bare_times(bare_env, bare_ids))
    return genq / bare


def bare_constant(env: Env, n: int) -> float:
    reset(env)
    ids = publish_bare(env, n, "bench.bare_constant", payloads=_requests(n))
    with worker(env, "bench.bare_app", POOL, CONCURRENCY):
        return drain_rate_bare(env, ids, timeout_s=600)


def bare_lookup_latencies(env: Env, n: int) -> list[float]:
    """The platform's own round trip in the same drain: a bare task's one GET, in ms."""
    reset(env)
    ids = publish_bare(env, n, "bench.bare_lookup", payloads=_requests(n))
    with worker(env, "bench.bare_app", POOL, CONCURRENCY):
        wait_drained(env, 600)
    return _lookup_ms(env, ids)


def _lookup_ms(env: Env, ids: list[str]) -> list[float]:
    pipe = env.client().pipeline(transaction=False)
    for index in ids:
        pipe.hget(f"bench:bare:{index}", "lookup_ms")
    return sorted(float(ms) for ms in pipe.execute())


def _p(values: list[float], q: float) -> float:
    return values[int(q * (len(values) - 1))]


def closed(env: Env, n: int) -> tuple[float, float]:
    """Median jobs/s of genq and the bare HTTP task at 50 ms."""
    env.simulator(latency_ms=50)
    return alternate(
        REPEATS,
        functools.partial(genq_rate, env, POOL, CONCURRENCY, n),
        functools.partial(bare_rate, env, POOL, CONCURRENCY, n),
    )


def main(n: int = 10_000, closed_n: int = 1_000) -> None:
    latencies: list[float] = []
    with bench_env() as env:
        rate, bare = alternate(
            OPEN_REPEATS,
            functools.partial(open_drain, env, n, latencies),
            functools.partial(bare_constant, env, n),
        )
        latencies.sort()
        degraded = len(latencies)
        p50, p99 = _p(latencies, 0.5), _p(latencies, 0.99)
        print(f"open drain: genq {rate:.0f}/s, bare {bare:.0f}/s; p50 {p50:.2f} p99 {p99:.2f} ms")
        lookups = bare_lookup_latencies(env, n)
        base50, base99 = _p(lookups, 0.5), _p(lookups, 0.99)
        print(f"bare task's own GET in the same drain: p50 {base50:.2f} p99 {base99:.2f} ms")
        paced_rate = round(rate / 2)
        paced, paced_get = [], []
        for _ in range(PACED_REPEATS):
            paced += paced_fallback(env, PACED_N, paced_rate)
            paced_get += paced_bare_lookups(env, PACED_N, paced_rate)
        paced.sort()
        paced_get.sort()
        print(
            f"paced at {paced_rate}/s: fallback p50 {_p(paced, 0.5):.2f} p99 "
            f"{_p(paced, 0.99):.2f}; bare GET p50 {_p(paced_get, 0.5):.2f} "
            f"p99 {_p(paced_get, 0.99):.2f} ms"
        )
        with bench_env() as second:
            paired = [paired_open(env, second, n) for _ in range(PAIRED_REPEATS)]
        print(f"open drain, paired: genq / bare {[round(p, 3) for p in paired]}")
        genq_closed, bare_closed = closed(env, closed_n)
        print(f"closed 50 ms: genq {genq_closed:.0f}/s, bare {bare_closed:.0f}/s")
    ok = lambda good: "met" if good else "NOT met"  # noqa: E731
    lines = [
        "## Degrade, don't retry (issues #4, #9)",
        "",
        f"{machine()}. Worker pool {POOL}, concurrency {CONCURRENCY}; jobs queued before the "
        "worker starts; jobs/s measured worker-side from first start to last finish; "
        "medians of alternating runs. genq and its baselines run on the same platform: "
        "Celery and kombu's Redis transport as shipped, the same broker options.",
        "",
        "| case | genq jobs/s | baseline jobs/s | genq / baseline | target |",
        "|---|---|---|---|---|",
        f"| open circuit, {n} jobs (half cache, half excerpt) vs bare constant task "
        f"(median of {OPEN_REPEATS}) "
        f"| {rate:.0f} | {bare:.0f} | {rate / bare:.2f} | ≥ 0.75: {ok(rate >= 0.75 * bare)} |",
        f"| closed circuit, 50 ms upstream, {closed_n} jobs vs bare HTTP task (median of "
        f"{REPEATS}) "
        f"| {genq_closed:.0f} | {bare_closed:.0f} | {genq_closed / bare_closed:.2f} "
        f"| ≥ 0.9: {ok(genq_closed >= 0.9 * bare_closed)} |",
        "",
        f"Open circuit, paired: genq and the bare constant task "
        f"draining {n} jobs each at the same time, each worker with its own redis-server, "
        "rates over the window both were draining; the VM's drift hits both alike. "
        f"genq / bare in {PAIRED_REPEATS} runs: "
        + ", ".join(f"{p:.2f}" for p in paired)
        + f" (median {statistics.median(paired):.2f}). Supporting evidence: two workers, "
        "two redis-servers and two simulators share the 2 cores here, so this is not the "
        "single-worker setting of the table, where the target is judged.",
        "",
        f"Fallback latency over {degraded} degraded answers in the {OPEN_REPEATS} genq runs "
        "(each result's `latency_ms`: the worker's time to produce the answer, the cache "
        "lookup included, and the excerpt of five 2,000-char documents on a miss; the final "
        f"write is not in it): p50 {p50:.2f} ms, p99 {p99:.2f} ms "
        f"(target p99 < 5 ms: {ok(p99 < 5)}).",
        "",
        f"The same latency at half that drain rate: {PACED_REPEATS} × {PACED_N} jobs "
        f"arriving at a steady {paced_rate} jobs/s into a running worker (not a backlog): "
        f"fallback p50 {_p(paced, 0.5):.2f} ms, p99 {_p(paced, 0.99):.2f} ms "
        f"(target p99 < 5 ms: {ok(_p(paced, 0.99) < 5)}); the bare task's one timed GET "
        f"at the same rate: p50 {_p(paced_get, 0.5):.2f} ms, "
        f"p99 {_p(paced_get, 0.99):.2f} ms.",
        "",
        "The platform's own round trip in the same drain: a bare task that makes one Redis "
        f"GET (a cache miss) while a worker drains {n} such tasks, same pool and "
        f"concurrency, times it at p50 {base50:.2f} ms, p99 {base99:.2f} ms "
        f"(genq's fallback p99 / that: {p99 / base99:.2f}). While a worker drains a backlog "
        "its one core is saturated (Celery's own work is ~3 ms of CPU per task here), so a "
        "thread waiting for a reply waits for the GIL behind the other task threads: the "
        "tail of any call that leaves Python, genq's lookup or the bare task's, is queueing "
        "there, not the lookup itself (a GET on an idle worker: see the micro bench).",
    ]
    write_section("fallback", "\n".join(lines))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
