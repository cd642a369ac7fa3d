"""Issue #10's benches: enqueueing a 10,000-line batch, and running it end to end.

Run: ``python -m bench.batch_bench [N]``. Writes the "batch" section of
docs/benchmarks.md. One redis-server, one simulator, one API process, one worker.

- Enqueue: ``POST /v1/batches`` on an uploaded file of N lines (every line validated,
  every item's message built and written in one transaction; no worker running), against
  publishing the same N ``genq.generate`` messages with a loop of ``send_task`` (what a
  Celery user writes: ``apply_async`` by name), and the same loop sharing one producer.
  Target: genq ≥ 10 × the loop.
- End to end at 50 ms simulated latency: upload, create, one worker drains the batch;
  items/s worker-side (from the first item done to the last), and upload to last
  result; against the bare Celery task making the same HTTP call (bench/bare_app.py),
  the same pool and concurrency, the same platform. While the batch drains, one
  interactive job is submitted: its time to final against its own latency.
- Redis bytes per item (its queued message) and per finished item (batch hash, items
  hash, output line), from ``MEMORY USAGE``.
"""

from __future__ import annotations

import io
import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from bench.harness import (
    CONCURRENCY,
    POOL,
    Env,
    _spawn,
    _wait,
    bench_env,
    drain_rate_bare,
    publish_bare,
    publisher,
    reset,
    worker,
)
from bench.report import machine, write_section
from core import keys
from core.contract import QUEUE_BATCH, TASK_GENERATE, GenerateRequest, JobMessage
from devstack.redis import free_port

KEY = "bench-key-0123456789abcdef"
LATENCY_MS = 50
ROUNDS = 3


@contextmanager
def api(env: Env) -> Iterator[str]:
    """genq's API as a uvicorn process."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)]
    proc = _spawn([*args, "--log-level", "warning"], env.genq_env(GENQ_API_KEYS=KEY), "api")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _ready(url), 20, "the API")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def lines(n: int) -> bytes:
    body = {"max_tokens": 16}
    return "".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"prompt": f"bench prompt {i}", **body},
            }
        )
        + "\n"
        for i in range(n)
    ).encode()


def upload(url: str, data: bytes) -> str:
    files = {"file": ("bench.jsonl", io.BytesIO(data))}
    resp = requests.post(
        f"{url}/v1/files", files=files, data={"purpose": "batch"}, headers=_auth(), timeout=120
    )
    resp.raise_for_status()
    return str(resp.json()["id"])


def create(url: str, file_id: str) -> dict[str, object]:
    body = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"}
    resp = requests.post(f"{url}/v1/batches", json=body, headers=_auth(), timeout=300)
    resp.raise_for_status()
    batch: dict[str, object] = resp.json()
    assert batch["status"] == "in_progress", batch
    return batch


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def genq_enqueue(env: Env, url: str, n: int) -> float:
    """Items/s of ``POST /v1/batches`` (validate, keep every item's message, enroll with
    the scheduler, which releases the first onto the queue), no worker running."""
    reset(env)
    file_id = upload(url, lines(n))
    started = time.perf_counter()
    batch_id = str(create(url, file_id)["id"])
    elapsed = time.perf_counter() - started
    assert env.client().hlen(keys.batch_messages(batch_id)) == n  # every item accepted
    return n / elapsed


def _payloads(n: int) -> list[dict[str, object]]:
    return [
        JobMessage(
            job_id=uuid.uuid4().hex,
            request=GenerateRequest.model_validate({"prompt": f"bench prompt {i}"}),
        ).model_dump(mode="json", exclude_defaults=True)
        for i in range(n)
    ]


def loop_enqueue(env: Env, n: int, shared_producer: bool) -> float:
    """Messages/s of a ``send_task`` loop for the same jobs (payloads built beforehand)."""
    reset(env)
    app = publisher(env)
    payloads = _payloads(n)
    started = time.perf_counter()
    if shared_producer:
        with app.producer_or_acquire() as producer:
            for payload in payloads:
                app.send_task(
                    TASK_GENERATE,
                    args=[payload],
                    task_id=str(payload["job_id"]),
                    queue=QUEUE_BATCH,
                    ignore_result=True,
                    producer=producer,
                )
    else:
        for payload in payloads:
            app.send_task(
                TASK_GENERATE,
                args=[payload],
                task_id=str(payload["job_id"]),
                queue=QUEUE_BATCH,
                ignore_result=True,
            )
    elapsed = time.perf_counter() - started
    assert env.client().llen(QUEUE_BATCH) == n
    return n / elapsed


def memory(env: Env, key: str) -> int:
    return int(env.client().memory_usage(key, samples=0) or 0)


def end_to_end(env: Env, url: str, n: int) -> dict[str, float]:
    """One batch of n items through one worker at LATENCY_MS."""
    reset(env)
    env.simulator(latency_ms=LATENCY_MS)
    started = time.perf_counter()
    batch = create(url, upload(url, lines(n)))
    batch_id = str(batch["id"])
    # Each waiting item's message: kept by its batch (the scheduler releases from there)
    # or already on the queue.
    kept = memory(env, keys.batch_messages(batch_id))
    queued_bytes = (memory(env, QUEUE_BATCH) + kept) / n
    samples: list[tuple[float, int]] = []
    interactive_s = 0.0
    with worker(env, "worker.app", POOL, CONCURRENCY, queues="interactive,batch"):
        while True:
            state = requests.get(f"{url}/v1/batches/{batch_id}", headers=_auth(), timeout=10).json()
            done = state["request_counts"]["completed"] + state["request_counts"]["failed"]
            samples.append((time.perf_counter(), done))
            if not interactive_s and done > n // 3:
                interactive_s = interactive_job(url)
            if state["status"] == "completed":
                break
            time.sleep(0.25)
    finished = time.perf_counter()
    first = next(t for t, count in samples if count > 0)
    counted = next(count for _, count in samples if count > 0)
    rate = (n - counted) / (samples[-1][0] - first)
    item_bytes = sum(
        memory(env, k)
        for k in (keys.batch(batch_id), keys.batch_items(batch_id), keys.batch_output(batch_id))
    )
    return {
        "rate": rate,
        "total_s": finished - started,
        "queued_bytes": queued_bytes,
        "item_bytes": item_bytes / n,
        "interactive_s": interactive_s,
    }


def interactive_job(url: str) -> float:
    """Seconds from submitting one job to it being final, while the batch drains."""
    started = time.perf_counter()
    resp = requests.post(f"{url}/v1/jobs", json={"prompt": "urgent"}, headers=_auth(), timeout=10)
    location = resp.headers["Location"]
    while requests.get(f"{url}{location}", headers=_auth(), timeout=10).json()["status"] not in (
        "succeeded",
        "failed",
    ):
        time.sleep(0.01)
    return time.perf_counter() - started


def bare_http(env: Env, n: int) -> float:
    reset(env)
    env.simulator(latency_ms=LATENCY_MS)
    ids = publish_bare(env, n, "bench.bare_generate")
    with worker(env, "bench.bare_app", POOL, CONCURRENCY):
        return drain_rate_bare(env, ids, timeout_s=900)


def main(n: int = 10_000) -> None:
    with bench_env() as env, api(env) as url:
        rounds = []  # genq and the loop in turns: the machine's load moves both alike
        for _ in range(ROUNDS):
            genq, loop = genq_enqueue(env, url, n), loop_enqueue(env, n, shared_producer=False)
            rounds.append((genq, loop))
            print(f"enqueue: genq {genq:.0f}/s, loop {loop:.0f}/s: {genq / loop:.1f}x")
        rounds.sort(key=lambda r: r[0] / r[1])
        genq, loop = rounds[len(rounds) // 2]
        shared = loop_enqueue(env, n, shared_producer=True)
        print(f"shared producer {shared:.0f}/s")
        e2e = end_to_end(env, url, n)
        bare = bare_http(env, n)
        print(f"end to end: {e2e}, bare {bare:.0f}/s")
    ok = lambda good: "met" if good else "NOT met"  # noqa: E731
    section = [
        "## Batches (issue #10)",
        "",
        f"{machine()}. One API process, one worker (pool {POOL}, concurrency {CONCURRENCY}), "
        "one redis-server, the simulator; Celery and kombu's Redis transport as shipped for "
        "genq and every baseline.",
        "",
        f"Enqueue of {n:,} lines (no worker running), {ROUNDS} rounds of genq then the loop; "
        "the round with the median ratio (all: "
        + ", ".join(f"{g / lp:.1f}" for g, lp in rounds)
        + "):",
        "",
        "| publisher | items/s | genq / that | target |",
        "|---|---|---|---|",
        f"| genq `POST /v1/batches` (every line validated, one transaction) | {genq:,.0f} | | |",
        f"| a `send_task` loop (`apply_async` by name) | {loop:,.0f} | {genq / loop:.1f} "
        f"| ≥ 10: {ok(genq >= 10 * loop)} |",
        f"| the same loop sharing one producer | {shared:,.0f} | {genq / shared:.1f} | |",
        "",
        f"End to end, {n:,} items at {LATENCY_MS} ms simulated latency:",
        "",
        "| figure | value |",
        "|---|---|",
        f"| items/s, worker-side (first item done to last) | {e2e['rate']:.0f} |",
        f"| bare Celery HTTP task, same pool and platform, jobs/s | {bare:.0f} |",
        f"| genq / bare | {e2e['rate'] / bare:.2f} |",
        f"| upload to last result | {e2e['total_s']:.1f} s |",
        f"| one interactive job submitted a third of the way in: time to final "
        f"| {e2e['interactive_s'] * 1000:.0f} ms (its own call: {LATENCY_MS} ms) |",
        f"| Redis bytes per waiting item (its message, kept or queued) "
        f"| {e2e['queued_bytes']:.0f} |",
        f"| Redis bytes per finished item (batch hash, items hash, output line) "
        f"| {e2e['item_bytes']:.0f} |",
    ]
    write_section("batch", "\n".join(section))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
