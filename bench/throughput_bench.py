"""End-to-end throughput of ``genq.generate`` against the simulator, next to a bare Celery
task making the same HTTP call with the same pool and concurrency (issue #2's bench).

Run: ``python -m bench.throughput_bench`` (``make bench`` runs every bench). Writes the
"throughput" section of docs/benchmarks.md. Target: genq ≥ 0.9 × bare. Both run on the
same platform: Celery and kombu as shipped, the same broker options, pool and prefetch.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable

from bench.harness import (
    CONCURRENCY,
    POOL,
    Env,
    bench_env,
    drain_rate_bare,
    drain_rate_genq,
    publish_bare,
    publish_genq,
    reset,
    worker,
)
from bench.report import machine, write_section

CASES = [(0, 800), (50, 800)]  # (simulator latency ms, jobs per run)
REPEATS = 5  # genq and bare alternate; the table shows medians
POOLS = [("threads", 8, 1000), ("threads", 16, 1000), ("threads", 32, 1000), ("prefork", 2, 300)]


def genq_rate(env: Env, pool: str, concurrency: int, n: int) -> float:
    """genq.generate jobs/s: n jobs queued first, then one worker drains them."""
    reset(env)
    ids = publish_genq(env, n)
    with worker(env, "worker.app", pool, concurrency):
        return drain_rate_genq(env, ids)


def bare_rate(env: Env, pool: str, concurrency: int, n: int) -> float:
    """The bare task's jobs/s, measured the same way."""
    reset(env)
    ids = publish_bare(env, n, "bench.bare_generate")
    with worker(env, "bench.bare_app", pool, concurrency):
        return drain_rate_bare(env, ids)


def alternate(
    runs: int, genq: Callable[[], float], bare: Callable[[], float]
) -> tuple[float, float]:
    """Medians of genq and bare, run in turn ``runs`` times (the VM drifts)."""
    rates = [(genq(), bare()) for _ in range(runs)]
    return (
        statistics.median(r[0] for r in rates),
        statistics.median(r[1] for r in rates),
    )


def main() -> None:
    rows = []
    with bench_env() as env:
        for latency, n in CASES:
            env.simulator(latency_ms=latency)
            genq, bare = alternate(
                REPEATS,
                functools.partial(genq_rate, env, POOL, CONCURRENCY, n),
                functools.partial(bare_rate, env, POOL, CONCURRENCY, n),
            )
            rows.append((latency, n, genq, bare))
            print(f"latency {latency} ms: genq {genq:.0f}/s, bare {bare:.0f}/s")
        env.simulator(latency_ms=50)
        pools = []
        for pool, conc, n in POOLS:
            rate = genq_rate(env, pool, conc, n)
            pools.append((pool, conc, n, rate))
            print(f"pool {pool} -c {conc}: {rate:.0f} jobs/s at 50 ms")
    table = [
        "## genq.generate vs a bare Celery task (issue #2)",
        "",
        f"{machine()}. Worker pool {POOL}, concurrency {CONCURRENCY}, prefetch 1, acks late; the "
        "simulator as upstream (HF protocol); jobs queued before the worker starts; jobs/s "
        "measured worker-side from first start "
        f"to last finish; median of {REPEATS} alternating runs. Target: genq ≥ 0.9 × bare. "
        "Both on the same platform: Celery and kombu's Redis transport as shipped, the same "
        "broker options, pool and prefetch.",
        "",
        "| upstream latency | jobs | genq jobs/s | bare task jobs/s | genq / bare | target |",
        "|---|---|---|---|---|---|",
    ]
    for latency, n, genq, bare in rows:
        ok = "met" if genq >= 0.9 * bare else "NOT met"
        table.append(
            f"| {latency} ms | {n} | {genq:.0f} | {bare:.0f} | {genq / bare:.2f} | ≥ 0.9: {ok} |"
        )
    table += [
        "",
        "Pool choice, genq.generate at 50 ms upstream latency:",
        "",
        "| pool | concurrency | jobs | jobs/s |",
        "|---|---|---|---|",
    ]
    table += [f"| {p} | {c} | {n} | {r:.0f} |" for p, c, n, r in pools]
    write_section("throughput", "\n".join(table))


if __name__ == "__main__":
    main()
