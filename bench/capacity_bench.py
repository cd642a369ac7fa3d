"""Issue #13's bench: filling a provider that serves C calls at once, each taking L.

Run: ``python -m bench.capacity_bench [N]`` (N = 6,000 jobs; C = 200, L = 1 s). Writes
the "capacity" section of docs/benchmarks.md. One redis-server, one simulator process
(``capacity`` C, 429 with ``Retry-After: 1`` beyond it), one API process.

- The physical limit: C / L jobs/s.
- Baseline: what a user would write instead: an asyncio script, ``aiohttp`` with a
  semaphore of C, calling the simulator directly (it knows C).
- genq: a batch of N lines through the Batch API, drained by two worker processes
  started beforehand; jobs/s from the batch's creation to its completion. Runs: the
  limit fixed at C (told), at three worker concurrencies; adaptive (C unknown, starting
  at 32); and fixed at 2 C (told wrong). For each: 429s, the simulator's peak of calls
  at once, and for the adaptive run the time to converge (the limit first at 0.9 C) and
  the 429 share after it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import requests

from bench.batch_bench import _auth, api, create, lines, upload
from bench.harness import Env, bench_env, reset, worker
from bench.report import machine, write_section

CAPACITY = 200
LATENCY_S = 1.0
WORKERS = 2
ADAPTIVE = "adaptive (C unknown), 2 × 128 threads"


def configure_simulator(env: Env) -> None:
    env.simulator(capacity=CAPACITY, latency_ms=LATENCY_S * 1000, retry_after_s=1)


def sim_stats(env: Env) -> dict[str, Any]:
    stats: dict[str, Any] = requests.get(f"{env.simulator_url}/_sim/stats", timeout=5).json()
    return stats


async def _aiohttp_run(url: str, n: int) -> float:
    gate = asyncio.Semaphore(CAPACITY)
    connector = aiohttp.TCPConnector(limit=CAPACITY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            async with gate:
                body = {"inputs": f"bench prompt {i}", "parameters": {"max_new_tokens": 16}}
                async with session.post(url, json=body) as resp:
                    await resp.read()
                    resp.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)


def baseline(env: Env, n: int) -> dict[str, Any]:
    """The asyncio script's jobs/s against the same simulator."""
    configure_simulator(env)
    rate = asyncio.run(_aiohttp_run(f"{env.simulator_url}/models/simulator/echo-1", n))
    stats = sim_stats(env)
    return {"rate": rate, "throttled": stats["over_capacity"], "calls": stats["calls"]}


@dataclass
class Sample:
    at: float
    done: int
    limit: int | None
    calls: int
    throttled: int


@contextmanager
def workers(env: Env, concurrency: int, **extra: str) -> Iterator[None]:
    with ExitStack() as stack:
        for _ in range(WORKERS):
            queues = "interactive,batch"
            stack.enter_context(
                worker(env, "worker.app", "threads", concurrency, queues=queues, **extra)
            )
        time.sleep(3)  # both ready before the batch is created
        yield


def genq_run(env: Env, url: str, n: int, concurrency: int, **extra: str) -> dict[str, Any]:
    """One batch of ``n`` through genq; jobs/s from creation to completion, and samples."""
    reset(env)
    configure_simulator(env)
    file_id = upload(url, lines(n))
    samples: list[Sample] = []
    with workers(env, concurrency, GENQ_UPSTREAM_TIMEOUT_S="10", **extra):
        started = time.perf_counter()
        batch_id = str(create(url, file_id)["id"])
        while True:
            state = requests.get(f"{url}/v1/batches/{batch_id}", headers=_auth(), timeout=10)
            counts = state.json()["request_counts"]
            circuits = requests.get(f"{url}/v1/circuits", headers=_auth(), timeout=10).json()
            limit = circuits[0]["limit"]["limit"] if circuits and circuits[0]["limit"] else None
            stats = sim_stats(env)
            at = time.perf_counter() - started
            done = counts["completed"] + counts["failed"]
            samples.append(Sample(at, done, limit, stats["calls"], stats["over_capacity"]))
            if state.json()["status"] == "completed":
                break
            time.sleep(0.5)
    stats = sim_stats(env)
    degraded = counts["failed"]
    return {
        "rate": n / samples[-1].at,
        "calls": stats["calls"],
        "throttled": stats["over_capacity"],
        "peak": stats["peak_concurrent"],
        "failed": degraded,
        "samples": samples,
    }


def steady(run: dict[str, Any], n: int) -> float:
    """Jobs/s between 10% and 90% done: the pipeline's pace without its start and end."""
    samples: list[Sample] = run["samples"]
    start = next(s for s in samples if s.done >= 0.1 * n)
    end = next(s for s in samples if s.done >= 0.9 * n)
    return (end.done - start.done) / (end.at - start.at)


def converged(run: dict[str, Any]) -> tuple[float | None, float | None]:
    """(seconds until the limit first reached 0.9 C, share of 429s after that)."""
    samples: list[Sample] = run["samples"]
    first = next((s for s in samples if s.limit is not None and s.limit >= 0.9 * CAPACITY), None)
    if first is None:
        return None, None
    last = samples[-1]
    calls = last.calls - first.calls
    return first.at, (last.throttled - first.throttled) / calls if calls else 0.0


def main(n: int = 6_000) -> None:
    physical = CAPACITY / LATENCY_S
    with bench_env() as env, api(env) as url:
        base = baseline(env, n)
        print(f"aiohttp: {base['rate']:.1f}/s", flush=True)
        runs: list[tuple[str, dict[str, Any]]] = []
        fixed = {"GENQ_UPSTREAM_LIMIT": "fixed", "GENQ_UPSTREAM_MAX_IN_FLIGHT": str(CAPACITY)}
        too_high = {**fixed, "GENQ_UPSTREAM_MAX_IN_FLIGHT": str(2 * CAPACITY)}
        plans = [  # 128 threads a worker: genq's default
            ("fixed at C, 2 × 64 threads", 64, fixed),
            ("fixed at C, 2 × 128 threads", 128, fixed),
            ("fixed at C, 2 × 256 threads", 256, fixed),
            (ADAPTIVE, 128, {}),
            ("fixed at 2 C (told wrong), 2 × 128 threads", 128, too_high),
        ]
        for label, concurrency, extra in plans:
            run = genq_run(env, url, n, concurrency, **extra)
            runs.append((label, run))
            print(f"{label}: {run['rate']:.1f}/s, 429s {run['throttled']}", flush=True)

    rows = []
    for label, run in runs:
        to_converge, share = converged(run)
        after = f"{share:.2%} after {to_converge:.0f} s" if share is not None else "–"
        if label.startswith("fixed"):
            after = "– (fixed)"
        rows.append(
            f"| genq, {label} | {run['rate']:.1f} | {steady(run, n):.1f} | "
            f"{run['rate'] / base['rate']:.2f} | "
            f"{run['rate'] / physical:.2f} | {run['throttled']} of {run['calls']} "
            f"({run['throttled'] / run['calls']:.1%}) | {after} | {run['peak']} | "
            f"{run['failed']} |"
        )
    samples: list[Sample] = dict(runs)[ADAPTIVE]["samples"]
    every = max(1, len(samples) // 12)
    trace = ", ".join(f"{s.at:.0f} s: {s.limit}" for s in samples[::every])
    header = (
        "| run | jobs/s | 10–90% jobs/s | vs asyncio | vs C / L | 429s | 429s once converged "
        "| peak calls at once | failed items |\n|---|---|---|---|---|---|---|---|---|"
    )
    base_row = (
        f"| asyncio script: `aiohttp`, semaphore of C | {base['rate']:.1f} | | 1.00 | "
        f"{base['rate'] / physical:.2f} | {base['throttled']} | | | |"
    )
    write_section(
        "capacity",
        f"""## Filling the provider (issue #13)

`python -m bench.capacity_bench` ({machine()}). The simulator serves C = {CAPACITY}
calls at once, each taking L = {LATENCY_S:g} s, and answers 429 (`Retry-After: 1`) beyond
that: the physical limit is C / L = {physical:.0f} jobs/s. {n:,} jobs per run: for genq one
batch through the Batch API, two worker processes (threads pool) started beforehand,
jobs/s from the batch's creation to its completion.

{header}
{base_row}
{chr(10).join(rows)}

The adaptive limit over time: {trace}.

- **Target** (genq ≥ 0.8 × the asyncio script, told C, at genq's default 128 threads a
  worker): the "fixed at C, 2 × 128" row. Between 10% and 90% done genq runs at the
  provider's pace; what it loses to the script is the start (a worker fetches its
  messages one at a time, and the first answers come a call later) and the end.
- **Concurrency**: 2 × 64 threads cannot hold C calls at once (128 at most); 2 × 256
  only adds threads that wait for a slot (a `BLPOP` each, woken one per freed slot), so
  128 a worker is the default.
- **Adaptive**: the limit starts at 32 and triples per round of calls while jobs wait
  for a slot, is cut by 10% at the first 429s, then wins back half the way to the last
  cut per round and probes gently past it; the time to converge is until it first
  reaches 0.9 C. The same provider with the jobs arriving over HTTP:
  `bench/front_door_bench.py`.
- **Told wrong** (2 C): with 256 threads the cluster puts up to 256 calls in flight, the
  simulator refuses what is over 200, and each refused job retries after `Retry-After`
  on its own budget: no item fails, but that share of calls is wasted on 429s.
""",
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6_000)
