"""Filling the provider through the front door: jobs submitted over HTTP, as users do.

The simulator serves C = 200 calls at once of L = 1 s (429 beyond); the physical limit is
C / L jobs/s. Baseline: the asyncio script of bench/capacity_bench.py (``aiohttp``, a
semaphore of C, calling the simulator directly). genq: default settings (the adaptive
limit, 128 threads a worker), ``ceil(C / 128)`` = 2 workers started beforehand, one API
process; an aiohttp client submits ``N`` jobs to ``POST /v1/jobs`` (64 at once) and
long-polls each (``GET /v1/jobs/{id}?wait_s=30``): jobs/s from the first submit to the
last answer; three rounds in turns, each genq run cold (Redis flushed, so the adaptive
limit climbs from its start). Target: the median ≥ 0.8× the asyncio script.
``python -m bench.front_door_bench [N]``.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import requests

from bench.batch_bench import _auth, api
from bench.capacity_bench import CAPACITY, LATENCY_S, baseline, configure_simulator, sim_stats
from bench.capacity_bench import workers as started_workers
from bench.harness import CONCURRENCY, Env, bench_env, reset
from bench.report import machine, write_section

SUBMITTING = 64
EVERY_S = 0.5
ROUNDS = 3
TARGET = 0.8


@contextmanager
def sampled(url: str, simulator_url: str) -> Iterator[list[tuple[float, float | None, int]]]:
    """Every ``EVERY_S``: (seconds, the target's limit, the simulator's calls in flight)."""
    samples: list[tuple[float, float | None, int]] = []
    stop = threading.Event()

    def sample() -> None:
        started = time.perf_counter()
        while not stop.wait(EVERY_S):
            circuits = requests.get(f"{url}/v1/circuits", headers=_auth(), timeout=10).json()
            limit = circuits[0]["limit"]["limit"] if circuits and circuits[0]["limit"] else None
            in_flight = requests.get(f"{simulator_url}/_sim/stats", timeout=5).json()["in_flight"]
            samples.append((time.perf_counter() - started, limit, in_flight))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        stop.set()
        sampler.join(5)


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


def _genq_run(env: Env, url: str, n: int) -> dict[str, Any]:
    """One cold run: Redis flushed (the limit starts over), workers started afresh."""
    reset(env)
    configure_simulator(env)
    with (
        started_workers(env, CONCURRENCY, GENQ_UPSTREAM_TIMEOUT_S="10"),
        sampled(url, env.simulator_url) as samples,
    ):
        rate = asyncio.run(_through_http(url, n))
    return {"rate": rate, "samples": samples, **sim_stats(env)}


def main(n: int = 2_000) -> None:
    physical = CAPACITY / LATENCY_S
    workers = math.ceil(CAPACITY / CONCURRENCY)
    rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
    with bench_env() as env, api(env) as url:
        for _ in range(ROUNDS):  # in turns, so the machine's load falls on both
            rounds.append((baseline(env, n), _genq_run(env, url, n)))
    ratios = [run["rate"] / base["rate"] for base, run in rounds]
    median = statistics.median(ratios)
    rows = "\n".join(
        f"| {i} | {base['rate']:.1f} | {run['rate']:.1f} | {ratio:.3f} | "
        f"{run['over_capacity']} of {run['calls']} | {run['peak_concurrent']} |"
        for i, ((base, run), ratio) in enumerate(zip(rounds, ratios, strict=True), 1)
    )
    met = "met" if median >= TARGET else "NOT met"
    climb = ", ".join(
        f"{at:.1f} s: {limit:.0f}/{in_flight}"
        for at, limit, in_flight in rounds[-1][1]["samples"]
        if limit
    )
    table = f"""## Filling the provider through the front door (`bench/front_door_bench.py`)

{machine()}. C = {CAPACITY} calls at once of L = {LATENCY_S:g} s (C / L = {physical:.0f}
jobs/s); {n:,} jobs submitted to `POST /v1/jobs` by one aiohttp client ({SUBMITTING} at once)
and long-polled until final, against the asyncio script (`aiohttp`, a semaphore of C,
calling the simulator directly). genq on default settings: the adaptive limit, starting
cold each round (Redis flushed), {workers} workers of {CONCURRENCY} threads, one API process.
{ROUNDS} rounds in turns.

| round | asyncio jobs/s | genq jobs/s | genq / asyncio | genq's 429s | peak calls at once |
|---|---|---|---|---|---|
{rows}

**Median genq / asyncio: {median:.2f}** (target ≥ {TARGET}: {met}).

The adaptive limit / the simulator's calls in flight in the last round, every
{EVERY_S:g} s: {climb}.
"""
    print(table)
    write_section("front_door", table)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2_000)
