"""Filling the provider through the front door: jobs submitted over HTTP, as users do.

The simulator serves C = 200 calls at once of L = 1 s (429 beyond); the physical limit is
C / L jobs/s. Baseline: the asyncio script of bench/capacity_bench.py (``aiohttp``, a
semaphore of C, calling the simulator directly). genq: default settings (the adaptive
limit, 128 threads a worker), ``ceil(C / 128)`` = 2 workers started beforehand, one API
process; an aiohttp client submits ``N`` jobs to ``POST /v1/jobs`` (64 at once) and
long-polls each (``GET /v1/jobs/{id}?wait_s=30``): jobs/s from the first submit to the
last answer. Target: ≥ 0.8× the asyncio script. ``python -m bench.front_door_bench [N]``.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from typing import Any

import aiohttp

from bench.batch_bench import _auth, api
from bench.capacity_bench import CAPACITY, LATENCY_S, baseline, configure_simulator, sim_stats
from bench.capacity_bench import workers as started_workers
from bench.harness import CONCURRENCY, bench_env, reset
from bench.report import machine, write_section

SUBMITTING = 64


async def _through_http(url: str, n: int) -> float:
    gate = asyncio.Semaphore(SUBMITTING)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, headers=_auth(), timeout=timeout) as http:

        async def one(i: int) -> None:
            async with gate:
                body = {
                    "prompt": f"front door {i}",
                    "params": {"max_new_tokens": 16},
                    "cache": "off",
                }
                async with http.post(f"{url}/v1/jobs", json=body) as resp:
                    assert resp.status == 202, await resp.text()
                    job_id = (await resp.json())["id"]
            while True:
                async with http.get(f"{url}/v1/jobs/{job_id}?wait_s=30") as resp:
                    job = await resp.json()
                if job["status"] in ("succeeded", "failed"):
                    assert job["status"] == "succeeded", job
                    return

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)


def main(n: int = 2_000) -> None:
    physical = CAPACITY / LATENCY_S
    workers = math.ceil(CAPACITY / CONCURRENCY)
    with bench_env() as env, api(env) as url:
        base = baseline(env, n)
        reset(env)
        configure_simulator(env)
        with started_workers(env, CONCURRENCY, GENQ_UPSTREAM_TIMEOUT_S="10"):
            rate = asyncio.run(_through_http(url, n))
        stats: dict[str, Any] = sim_stats(env)
    ratio = rate / base["rate"]
    base_row = (
        f"| asyncio script: `aiohttp`, semaphore of C | {base['rate']:.1f} | 1.00 "
        f"| {base['rate'] / physical:.2f} | {base['throttled']} | |"
    )
    genq_row = (
        f"| genq, jobs over HTTP | {rate:.1f} | **{ratio:.2f}** | {rate / physical:.2f} "
        f"| {stats['over_capacity']} of {stats['calls']} | {stats['peak_concurrent']} |"
    )
    table = f"""## Filling the provider through the front door (`bench/front_door_bench.py`)

{machine()}. C = {CAPACITY} calls at once of L = {LATENCY_S:g} s (C / L = {physical:.0f}
jobs/s); {n:,} jobs submitted to `POST /v1/jobs` by one aiohttp client ({SUBMITTING} at once)
and long-polled until final; default settings (adaptive limit), {workers} workers of
{CONCURRENCY} threads, one API process. Target ≥ 0.8× the asyncio script.

| run | jobs/s | vs asyncio | vs C / L | 429s | peak calls at once |
|---|---|---|---|---|---|
{base_row}
{genq_row}
"""
    print(table)
    write_section("front_door", table)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2_000)
