"""Shared machinery of the Celery benches: a redis-server, the simulator, worker processes,
publishing jobs and timing how fast a worker drains them.

Throughput is measured on the worker side: jobs / (last finish − first start), from the
timestamps each job writes to Redis, so publishing and worker start-up do not count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis
import requests
from celery import Celery

from core.contract import QUEUE_INTERACTIVE, TASK_GENERATE, GenerateRequest, JobMessage
from core.records import JobStore
from core.settings import Settings
from devstack.redis import RedisProcess, ensure_redis_server, free_port
from worker.app import celery_config

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / ".run" / "bench"
#: genq's default worker pool and concurrency (core/settings.py): what benches compare.
POOL = str(Settings.model_fields["worker_pool"].default)
CONCURRENCY = int(Settings.model_fields["worker_concurrency"].default)


@dataclass
class Env:
    """A bench environment: one redis-server and one simulator process."""

    redis_url: str
    simulator_url: str

    def genq_env(self, **extra: str) -> dict[str, str]:
        return {
            "GENQ_REDIS_URL": self.redis_url,
            "GENQ_UPSTREAM_URL": self.simulator_url,
            "GENQ_UPSTREAM_PROTOCOL": "hf",
            "GENQ_UPSTREAM_TIMEOUT_S": "10",
            **extra,
        }

    def settings(self, **extra: str) -> Settings:
        env = self.genq_env(**extra)
        return Settings.model_validate({k[5:].lower(): v for k, v in env.items()})

    def simulator(self, **config: object) -> None:
        requests.post(f"{self.simulator_url}/_sim/reset", timeout=5).raise_for_status()
        requests.post(
            f"{self.simulator_url}/_sim/config", json=config, timeout=5
        ).raise_for_status()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)


def _spawn(args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            args, env={**os.environ, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )


@contextmanager
def bench_env() -> Iterator[Env]:
    """A fresh redis-server and simulator for one bench run."""
    redis_proc = RedisProcess(ensure_redis_server(lambda _: None))
    redis_proc.start()
    port = free_port()
    sim = _spawn([sys.executable, "-m", "simulator", "--port", str(port)], {}, "simulator")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _answers(f"{url}/_sim/health"), 15, "the simulator")
        yield Env(redis_proc.url, url)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        redis_proc.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


@contextmanager
def worker(
    env: Env,
    app: str,
    pool: str,
    concurrency: int,
    *,
    queues: str = QUEUE_INTERACTIVE,
    **extra: str,
) -> Iterator[None]:
    """A ``celery worker`` process for ``app`` with the given pool, stopped afterwards."""
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-Q",
        queues,
        "-P",
        pool,
        "-c",
        str(concurrency),
        "--loglevel",
        "WARNING",
        "--without-mingle",
        "--without-gossip",
        "--hostname",
        f"bench-{uuid.uuid4().hex[:6]}@%h",
    ]
    proc = _spawn(args, env.genq_env(**extra), f"worker-{app}-{pool}")
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def publisher(env: Env) -> Celery:
    app = Celery("bench-publisher", set_as_current=False)
    app.conf.update(celery_config(env.settings()))
    return app


def publish_genq(
    env: Env, n: int, bodies: list[dict[str, object]] | None = None, rate: float = 0
) -> list[str]:
    """Create ``n`` job records (as the API would) and publish their tasks; at ``rate``
    jobs/s if given (steady arrivals into a running worker), else all at once."""
    store = JobStore(env.client(), 3600)
    ids = [uuid.uuid4().hex for _ in range(n)]
    for job_id in ids:
        store.create(job_id, owner="bench")
    app = publisher(env)
    pace = _Pace(rate)
    with app.producer_or_acquire() as producer:
        for i, job_id in enumerate(ids):
            pace.wait(i)
            default = {"prompt": f"bench prompt {i}", "params": {"max_new_tokens": 16}}
            body = bodies[i] if bodies else default
            message = JobMessage(job_id=job_id, request=GenerateRequest.model_validate(body))
            app.send_task(
                TASK_GENERATE,
                args=[message.model_dump(mode="json")],
                task_id=job_id,
                queue=QUEUE_INTERACTIVE,
                ignore_result=True,
                producer=producer,
            )
    return ids


def publish_bare(
    env: Env,
    n: int,
    task: str,
    payloads: list[dict[str, object]] | None = None,
    rate: float = 0,
) -> list[str]:
    """Publish ``n`` baseline tasks: ``(index, prompt)``, or ``(index, payload)`` so the
    baseline carries the same message as the genq job it is compared with; at ``rate``
    tasks/s if given."""
    app = publisher(env)
    pace = _Pace(rate)
    with app.producer_or_acquire() as producer:
        for i in range(n):
            pace.wait(i)
            second: object = payloads[i] if payloads else f"bench prompt {i}"
            app.send_task(
                task,
                args=[i, second],
                queue=QUEUE_INTERACTIVE,
                ignore_result=True,
                producer=producer,
            )
    return [str(i) for i in range(n)]


class _Pace:
    """Sleeps so that the ``i``-th publish happens ``i / rate`` s after the first (no
    wait at all when ``rate`` is 0)."""

    def __init__(self, rate: float) -> None:
        self._rate, self._start = rate, time.monotonic()

    def wait(self, i: int) -> None:
        if self._rate > 0:
            time.sleep(max(0.0, self._start + i / self._rate - time.monotonic()))


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def wait_drained(env: Env, timeout_s: float) -> None:
    """Wait until the queue is empty and nothing is unacked (acks come after the work).

    Two cheap commands a poll, the same for genq and the baseline: polling every job's
    record instead would load Redis and this process, on the cores the worker needs.
    """
    client = env.client()

    def drained() -> bool:
        pipe = client.pipeline(transaction=False)
        pipe.llen(QUEUE_INTERACTIVE)
        pipe.hlen("unacked")
        return sum(pipe.execute()) == 0

    time.sleep(0.5)  # let the worker take the first messages
    _wait(drained, timeout_s, "the queue to drain")


def _rows(env: Env, keys: list[str], *fields: str) -> list[list[str | None]]:
    pipe = env.client().pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, *fields)
    return pipe.execute()  # type: ignore[no-any-return]


def genq_times(env: Env, ids: list[str]) -> tuple[list[float], list[float]]:
    """Start and finish epochs of finished genq jobs (their records' timestamps)."""
    done = _rows(env, [f"genq:job:{i}" for i in ids], "status", "started_at", "finished_at")
    if not all(row[0] in ("succeeded", "failed") for row in done):
        raise RuntimeError("the queue drained but some genq jobs are not final")
    return [_epoch(r[1]) for r in done if r[1]], [_epoch(r[2]) for r in done if r[2]]


def bare_times(env: Env, ids: list[str]) -> tuple[list[float], list[float]]:
    """Start and finish epochs the baseline tasks recorded."""
    done = _rows(env, [f"bench:bare:{i}" for i in ids], "started", "finished")
    if not all(row[1] for row in done):
        raise RuntimeError("the queue drained but some bare jobs did not record")
    return [float(r[0]) for r in done if r[0]], [float(r[1]) for r in done if r[1]]


def drain_rate_genq(env: Env, ids: list[str], timeout_s: float = 300) -> float:
    """Jobs/s between the first job's start and the last job's finish."""
    wait_drained(env, timeout_s)
    starts, ends = genq_times(env, ids)
    return len(ids) / (max(ends) - min(starts))


def drain_rate_bare(env: Env, ids: list[str], timeout_s: float = 300) -> float:
    wait_drained(env, timeout_s)
    starts, ends = bare_times(env, ids)
    return len(ids) / (max(ends) - min(starts))


def overlap_rates(*runs: tuple[list[float], list[float]]) -> list[float]:
    """Each run's jobs/s over the window all of them were draining at once: jobs
    finished inside it / its length. Two workers started together finish apart; the
    slower one's tail, run alone, must not count."""
    begin = max(min(starts) for starts, _ in runs)
    end = min(max(ends) for _, ends in runs)
    if end <= begin:
        raise RuntimeError("the runs did not overlap")
    return [sum(begin <= t <= end for t in ends) / (end - begin) for _, ends in runs]


def reset(env: Env) -> None:
    env.client().flushdb()
