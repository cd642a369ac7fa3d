"""The front door: genq's poll and enqueue routes against a minimal FastAPI app.

genq's API (``uvicorn api.main:app``) and ``bench/minimal_app.py`` (the same bearer
check and the same Redis work, async on ``redis.asyncio``) each run as one uvicorn
process on the same redis-server; one aiohttp client keeps ``CONCURRENCY`` requests in
flight for ``RUN_S`` seconds per measurement. Polls read 1,000 job records written by
genq's own ``JobStore``; enqueues post ``{"prompt": …}``. The two apps are measured in
turns, ``ROUNDS`` times; reported: the median rates, and the median of the rounds'
ratios (each round's two runs are back to back); targets: poll ≥ 0.8×, enqueue ≥ 0.7×
the minimal app.

Long-poll: ``LONG_POLLS`` requests wait at once (``GET /v1/jobs/{id}?wait_s=30``) on jobs
that the bench then makes final, ``LONG_POLLS / FINISH_S`` a second, through genq's own
``JobStore.finish``; reported: how late after its final write each is answered (p50,
p99), and the API process's CPU while all of them wait. ``python -m bench.api_bench``.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import redis

from api.auth import owner_of
from bench.harness import Env, _spawn, _wait, bench_env
from bench.report import machine, write_section
from core.contract import JobResult
from core.records import JobStore
from devstack.redis import free_port

KEY = "bench-api-key-0123456789abcdef"
LONG_POLLS, FINISH_S, IDLE_S = 1000, 10.0, 3.0
CONCURRENCY, RUN_S, ROUNDS, RECORDS = 64, 4.0, 5, 1000
APPS = {"genq": "api.main:app", "minimal": "bench.minimal_app:app"}


@contextmanager
def served(env: Env, target: str) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", target, "--port", str(port), "--log-level", "warning"]
    proc = _spawn(args, env.genq_env(GENQ_API_KEYS=KEY), f"api-bench-{target.split('.')[0]}")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _up(url), 30, f"{target} to answer")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _up(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/v1/jobs/x", timeout=1).status_code == 401
    except requests.RequestException:
        return False


async def _load(url: str, kind: str, ids: list[str], seconds: float = RUN_S) -> float:
    """Requests answered (200 / 202) per second over ``seconds`` at ``CONCURRENCY``."""
    headers = {"Authorization": f"Bearer {KEY}"}
    done, expected = 0, 200 if kind == "poll" else 202
    end = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def one() -> None:
            nonlocal done
            while time.monotonic() < end:
                if kind == "poll":
                    call = http.get(f"{url}/v1/jobs/{random.choice(ids)}")
                else:
                    call = http.post(f"{url}/v1/jobs", json={"prompt": f"bench {uuid.uuid4()}"})
                async with call as resp:
                    await resp.read()
                    if resp.status != expected:
                        raise RuntimeError(f"{kind} answered {resp.status}: {await resp.text()}")
                    done += 1

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        return done / (time.monotonic() - started)


def measure(env: Env) -> dict[tuple[str, str], list[float]]:
    client = redis.Redis.from_url(env.redis_url, decode_responses=True)
    store = JobStore(client, 3600)
    ids = [uuid.uuid4().hex for _ in range(RECORDS)]
    for job_id in ids:
        store.create(job_id, owner_of(KEY))
    rates: dict[tuple[str, str], list[float]] = {}
    with served(env, APPS["genq"]) as genq_url, served(env, APPS["minimal"]) as minimal_url:
        urls = {"genq": genq_url, "minimal": minimal_url}
        for kind in ("poll", "enqueue"):
            for url in urls.values():  # warm-up: connections, first imports, scripts
                asyncio.run(_load(url, kind, ids, seconds=1.0))
            for _ in range(ROUNDS):
                for name, url in urls.items():
                    rates.setdefault((kind, name), []).append(asyncio.run(_load(url, kind, ids)))
                    client.delete("interactive")
    return rates


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _long_polls(url: str, env: Env, pid: int) -> dict[str, float]:
    client = redis.Redis.from_url(env.redis_url, decode_responses=True)
    store = JobStore(client, 3600)
    ids = [uuid.uuid4().hex for _ in range(LONG_POLLS)]
    for job_id in ids:
        store.create(job_id, owner_of(KEY))
    answered: dict[str, float] = {}
    written: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as http:

        async def poll(job_id: str) -> None:
            async with http.get(f"{url}/v1/jobs/{job_id}?wait_s=30") as resp:
                body = await resp.json()
                answered[job_id] = time.monotonic()
                assert body["status"] == "succeeded", body

        polls = [asyncio.create_task(poll(job_id)) for job_id in ids]
        await asyncio.sleep(IDLE_S)  # all connected and waiting
        cpu = _cpu_s(pid)
        await asyncio.sleep(IDLE_S)
        idle_cpu = (_cpu_s(pid) - cpu) / IDLE_S
        result = JobResult(text="done", model="m", source="upstream", degraded=False, latency_ms=1)
        for job_id in ids:
            store.finish(job_id, result=result)
            written[job_id] = time.monotonic()
            await asyncio.sleep(FINISH_S / LONG_POLLS)
        await asyncio.gather(*polls)
    late = sorted((answered[j] - written[j]) * 1000 for j in ids)
    return {
        "p50_ms": late[len(late) // 2],
        "p99_ms": late[int(len(late) * 0.99)],
        "idle_cpu": idle_cpu,
    }


def long_poll(env: Env) -> dict[str, float]:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", APPS["genq"], "--port", str(port)]
    proc = _spawn([*args, "--log-level", "warning"], env.genq_env(GENQ_API_KEYS=KEY), "lp")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _up(url), 30, "genq to answer")
        return asyncio.run(_long_polls(url, env, proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main() -> None:
    with bench_env() as env:
        rates = measure(env)
        waited = long_poll(env)
    rows = []
    targets = {"poll": 0.8, "enqueue": 0.7}
    for kind, route in (("poll", "`GET /v1/jobs/{id}`"), ("enqueue", "`POST /v1/jobs`")):
        genq = statistics.median(rates[(kind, "genq")])
        minimal = statistics.median(rates[(kind, "minimal")])
        pairs = list(zip(rates[(kind, "genq")], rates[(kind, "minimal")], strict=True))
        # Each round's pair ran back to back: their ratio is what the machine's drifting
        # load disturbs least.
        ratio = statistics.median(g / m for g, m in pairs)
        each = ", ".join(f"{g:.0f}/{m:.0f}" for g, m in pairs)
        ok = "met" if ratio >= targets[kind] else "not met"
        rows.append(
            f"| {kind}: {route} | {genq:,.0f}/s | {minimal:,.0f}/s | **{ratio:.2f}** "
            f"| ≥ {targets[kind]} ({ok}) | {each} |"
        )
    table = "\n".join(
        [
            "## The front door: poll and enqueue (`bench/api_bench.py`)",
            "",
            f"{machine()}. One uvicorn process each, one aiohttp client at {CONCURRENCY} "
            f"requests in flight, {RUN_S:g} s per measurement, the apps in turns, {ROUNDS} "
            "rounds: the rates are the medians, the ratio the median of each round's; the "
            "minimal app (`bench/minimal_app.py`) does the same bearer check "
            "and Redis work, async on `redis.asyncio`.",
            "",
            "| route | genq | minimal app | genq / minimal | target | each round (genq/minimal) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Long-poll: {LONG_POLLS:,} requests waiting at once on jobs made final over "
            f"{FINISH_S:g} s: answered {waited['p50_ms']:.1f} ms (p50) and "
            f"{waited['p99_ms']:.1f} ms (p99) after the job's final write; while all "
            f"waited, the API process used {waited['idle_cpu'] * 100:.1f}% of a core "
            "(no Redis round trip per waiting request: a completion signal wakes it).",
        ]
    )
    print(table)
    write_section("api", table)


if __name__ == "__main__":
    main()
