"""Issue #22's bench: three keys' batches share the batch capacity.

Run: ``python -m bench.fairness_bench [SCALE]`` (SCALE 1: batches of 20,000, 1,000 and
20 lines). Writes the "fairness" section of docs/benchmarks.md. One redis-server, one
simulator (100 ms a call), a fixed call limit of 200, two workers of 128 threads, one
API process; keys A, B and C submit their batches in that order, one right after the
other. Measured:

- each batch's completion time (from its creation to its last item) with all three
  submitted, against the time it takes alone;
- Jain's fairness index of the keys' throughput (items done per second) while all three
  are backlogged (from C's first item done to its last), sampled from Redis every 10 ms;
- C's completion time against A's remaining drain when C was created (target ≤ 0.2);
- total items/s (first creation to last item) against today's first-in-first-out path
  in the same run: every item released onto the queue at creation
  (``GENQ_BATCH_READY_DEPTH`` above the total), the same platform otherwise.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import requests

from bench.harness import CONCURRENCY, Env, _spawn, _wait, bench_env, reset, worker
from bench.report import machine, write_section
from core import keys
from devstack.redis import free_port

KEYS = {"A": "bench-key-a-0123456789abcdef", "B": "bench-key-b-0123456789abcdef"}
KEYS["C"] = "bench-key-c-0123456789abcdef"
SIZES = {"A": 20_000, "B": 1_000, "C": 20}
LATENCY_MS, LIMIT, WORKERS = 100, 200, 2
FIFO_DEPTH = 10**9
SAMPLE_S = 0.01
ROUNDS = 2


@contextmanager
def cluster(env: Env, depth: int) -> Iterator[str]:
    """The API and two workers, the scheduler keeping the batch queue ``depth`` deep."""
    extra = {
        "GENQ_API_KEYS": ",".join(KEYS.values()),
        "GENQ_UPSTREAM_LIMIT": "fixed",
        "GENQ_UPSTREAM_MAX_IN_FLIGHT": str(LIMIT),
        "GENQ_BATCH_READY_DEPTH": str(depth),
        "GENQ_MAX_BATCH_REQUESTS": str(max(SIZES.values())),
    }
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)]
    api = _spawn([*args, "--log-level", "warning"], env.genq_env(**extra), "fairness-api")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _ready(url), 20, "the API")
        with ExitStack() as stack:
            queues = "interactive,batch"
            for _ in range(WORKERS):
                running = worker(env, "worker.app", "threads", CONCURRENCY, queues=queues, **extra)
                stack.enter_context(running)
            time.sleep(3)  # both workers consuming before the first batch
            yield url
    finally:
        api.terminate()
        api.wait(timeout=10)


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _lines(name: str, n: int) -> bytes:
    return "".join(
        json.dumps(
            {
                "custom_id": f"{name}{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"prompt": f"{name} prompt {i}", "max_tokens": 8, "cache": "off"},
            }
        )
        + "\n"
        for i in range(n)
    ).encode()


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def _upload(url: str, name: str, n: int) -> str:
    files = {"file": (f"{name}.jsonl", io.BytesIO(_lines(name, n)))}
    resp = requests.post(
        f"{url}/v1/files", files=files, data={"purpose": "batch"}, headers=_auth(name), timeout=120
    )
    resp.raise_for_status()
    return str(resp.json()["id"])


def _create(url: str, name: str, file_id: str) -> str:
    body = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"}
    resp = requests.post(f"{url}/v1/batches", json=body, headers=_auth(name), timeout=300)
    resp.raise_for_status()
    return str(resp.json()["id"])


@dataclass
class Run:
    created: dict[str, float] = field(default_factory=dict)
    done_at: dict[str, float] = field(default_factory=dict)
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    """(seconds, items done by batch name), every SAMPLE_S."""


def _run(env: Env, depth: int, names: list[str]) -> Run:
    """Submit ``names``' batches one after another; follow them until all are done."""
    reset(env)
    env.simulator(latency_ms=LATENCY_MS)
    run = Run()
    with cluster(env, depth) as url:
        files = {name: _upload(url, name, SIZES[name]) for name in names}
        ids: dict[str, str] = {}
        stop = threading.Event()
        client = env.client()

        def sample() -> None:
            while not stop.wait(SAMPLE_S):
                pipe = client.pipeline(transaction=False)
                known = dict(ids)
                for batch_id in known.values():
                    pipe.hmget(keys.batch(batch_id), "completed", "failed", "status")
                now = time.perf_counter()
                done: dict[str, int] = {}
                for name, (ok, failed, status) in zip(known, pipe.execute(), strict=True):
                    done[name] = int(ok or 0) + int(failed or 0)
                    if status == "completed" and name not in run.done_at:
                        run.done_at[name] = now
                run.samples.append((now, done))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for name in names:
            run.created[name] = time.perf_counter()
            ids[name] = _create(url, name, files[name])
        deadline = time.monotonic() + 600
        while len(run.done_at) < len(names) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        sampler.join(5)
    return run


def jain(rates: list[float]) -> float:
    """Jain's fairness index: 1 when all are equal, 1/n when one takes everything."""
    return sum(rates) ** 2 / (len(rates) * sum(r * r for r in rates)) if any(rates) else 0.0


def shares(run: Run) -> tuple[float, dict[str, float]]:
    """Jain's index and items/s per key while all three are backlogged: from C's first
    item done to its last."""
    first = next(i for i, (_, done) in enumerate(run.samples) if done.get("C", 0) > 0)
    last = next(i for i, (_, done) in enumerate(run.samples) if done.get("C", 0) >= SIZES["C"])
    last = max(last, first + 1)
    (t0, d0), (t1, d1) = run.samples[first - 1], run.samples[last]
    rates = {name: (d1.get(name, 0) - d0.get(name, 0)) / (t1 - t0) for name in KEYS}
    return jain(list(rates.values())), rates


def makespan(run: Run) -> float:
    """From the first batch's creation to the last item done."""
    return max(run.done_at.values()) - min(run.created.values())


def drain_left(run: Run) -> float:
    """A's remaining drain when C was created: until A's last item."""
    return run.done_at["A"] - run.created["C"]


def main(scale: float = 1.0) -> None:
    for name in SIZES:
        SIZES[name] = max(1, int(SIZES[name] * scale))
    names = list(SIZES)
    pairs: list[tuple[Run, Run]] = []
    with bench_env() as env:
        alone = {name: _run(env, 64, [name]) for name in names}
        for _ in range(ROUNDS):  # in turns, so the machine's load falls on both
            pairs.append((_run(env, 64, names), _run(env, FIFO_DEPTH, names)))
    total = sum(SIZES.values())
    ratios = [makespan(fifo) / makespan(fair) for fair, fifo in pairs]
    fair, fifo = pairs[-1]
    rows, rates = [], {}
    for kind, run in (("scheduler", fair), ("first in, first out (today)", fifo)):
        index, per_key = shares(run)
        rates[kind] = total / makespan(run)
        times = [run.done_at[n] - run.created[n] for n in names]
        c_share = times[2] / drain_left(run)
        cells = " | ".join(
            f"{t:.1f} s ({t / (alone[n].done_at[n] - alone[n].created[n]):.1f}×)"
            for n, t in zip(names, times, strict=True)
        )
        shown = ", ".join(f"{n} {per_key[n]:.0f}/s" for n in names)
        rows.append(
            f"| {kind} | {cells} | {index:.2f} ({shown}) | {c_share:.3f} | {rates[kind]:.0f} |"
        )
    alone_cells = " | ".join(f"{alone[n].done_at[n] - alone[n].created[n]:.1f} s" for n in names)
    ratio = statistics.median(ratios)
    index = shares(fair)[0]
    c_share = (fair.done_at["C"] - fair.created["C"]) / drain_left(fair)
    verdicts = [
        f"Jain's index {index:.2f} (target ≥ 0.95: {'met' if index >= 0.95 else 'NOT met'})",
        f"C done within {c_share:.3f} of A's remaining drain "
        f"(target ≤ 0.2: {'met' if c_share <= 0.2 else 'NOT met'})",
        f"throughput {ratio:.2f}× first in, first out, the median of {ROUNDS} rounds in turns "
        f"({', '.join(f'{r:.2f}' for r in ratios)}; target ≥ 0.95: "
        f"{'met' if ratio >= 0.95 else 'NOT met'})",
    ]
    table = f"""## Fair share: three keys' batches (issue #22)

`python -m bench.fairness_bench` ({machine()}). The simulator answers in
{LATENCY_MS} ms; a fixed call limit of {LIMIT}; {WORKERS} workers of {CONCURRENCY} threads;
one API process. Keys A, B and C create batches of {SIZES["A"]:,}, {SIZES["B"]:,} and
{SIZES["C"]:,} lines in that order, one right after the other. Completion time: from a
batch's creation to its last item (× its time alone). Jain's index: the keys' items/s
while all three are backlogged (C's first item done to its last), sampled every
{SAMPLE_S * 1000:.0f} ms. C / A's drain: C's completion time over what was left of A's
when C was created. The rows are the last of {ROUNDS} rounds (the scheduler's run and
today's, in turns).

| run | A | B | C | Jain's index (items/s per key) | C / A's drain | items/s |
|---|---|---|---|---|---|---|
| alone | {alone_cells} | | | |
{chr(10).join(rows)}

{"; ".join(verdicts)}.
"""
    print(table)
    write_section("fairness", table)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
