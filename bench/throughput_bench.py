"""End-to-end throughput of ``genq.generate`` against the simulator, next to a bare Celery
task making the same HTTP call with the same pool and concurrency (issue #2's bench).

Run: ``python -m bench.throughput_bench`` (``make bench`` runs every bench). Writes the
"throughput" section of docs/benchmarks.md. Target: genq ≥ 0.9 × bare.

Two baselines, both measured in every repeat: the bare task on Celery as shipped (the
target's baseline: what a hand-written Celery task gets), and the same bare task on
genq's kombu transport (worker/transport.py), so genq's own task overhead shows apart
from what its transport saves.
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


def bare_rate(env: Env, pool: str, concurrency: int, n: int, transport: str = "stock") -> float:
    """The bare task's jobs/s, measured the same way, on kombu's transport or genq's."""
    reset(env)
    ids = publish_bare(env, n, "bench.bare_generate")
    with worker(env, "bench.bare_app", pool, concurrency, BENCH_BARE_TRANSPORT=transport):
        return drain_rate_bare(env, ids)


def alternate(
    runs: int, genq: Callable[[], float], bare: Callable[[str], float]
) -> tuple[float, float, float]:
    """Medians of genq, bare (kombu's transport) and bare (genq's), run in turn."""
    rates = [(genq(), bare("stock"), bare("genq")) for _ in range(runs)]
    return tuple(statistics.median(column) for column in zip(*rates, strict=True))  # type: ignore[return-value]


def main() -> None:
    rows = []
    with bench_env() as env:
        for latency, n in CASES:
            env.simulator(latency_ms=latency)
            genq, bare, bare_t = alternate(
                REPEATS,
                functools.partial(genq_rate, env, POOL, CONCURRENCY, n),
                functools.partial(bare_rate, env, POOL, CONCURRENCY, n),
            )
            rows.append((latency, n, genq, bare, bare_t))
            print(f"latency {latency} ms: genq {genq:.0f}/s, bare {bare:.0f}/s ({bare_t:.0f}/s)")
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
        f"to last finish; median of {REPEATS} alternating runs. Target: genq ≥ 0.9 × bare "
        "(the bare task on Celery as shipped). Last two columns: the same bare task on "
        "genq's kombu transport, which leaves only genq's task overhead in the ratio.",
        "",
        "| upstream latency | jobs | genq jobs/s | bare task jobs/s | genq / bare | target "
        "| bare, genq's transport | genq / that |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for latency, n, genq, bare, bare_t in rows:
        ok = "met" if genq >= 0.9 * bare else "NOT met"
        table.append(
            f"| {latency} ms | {n} | {genq:.0f} | {bare:.0f} | {genq / bare:.2f} | ≥ 0.9: {ok} "
            f"| {bare_t:.0f} | {genq / bare_t:.2f} |"
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
