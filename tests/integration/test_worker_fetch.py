"""A worker started as the Procfile starts it (Celery's mingle and gossip on) takes a
queued burst with the transport's batch fetch, not one BRPOP per job."""

from __future__ import annotations

import sys
import time
import uuid

import redis

from devstack.redis import RedisProcess
from simulator.server import SimulatorServer
from tests.integration.conftest import genq_env, publisher_for, settings_for, start_process
from worker.contract import QUEUE_INTERACTIVE, TASK_GENERATE, GenerateRequest, JobMessage
from worker.records import JobStore

JOBS = 100


def test_a_procfile_worker_drains_a_burst_with_few_brpops(redis_proc: RedisProcess) -> None:
    redis_url = redis_proc.url.rsplit("/", 1)[0] + "/2"  # own database: own broker queues
    with SimulatorServer() as sim:
        env = genq_env(redis_url, sim.url)
        settings = settings_for(env)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        client.flushdb()
        store = JobStore(client, settings.job_ttl_s)
        publisher = publisher_for(settings)
        ids = [uuid.uuid4().hex for _ in range(JOBS)]
        for i, job_id in enumerate(ids):
            store.create(job_id, owner="fetch-test")
            message = JobMessage(job_id=job_id, request=GenerateRequest(prompt=f"burst {i}"))
            publisher.send_task(
                TASK_GENERATE,
                args=[message.model_dump(mode="json")],
                task_id=job_id,
                queue=QUEUE_INTERACTIVE,
                ignore_result=True,
            )
        client.config_resetstat()
        args = [sys.executable, "-m", "celery", "-A", "worker.app", "worker"]
        args += ["-Q", "interactive,batch", "--loglevel", "INFO", "--hostname", "fetch@%h"]
        worker = start_process(args, env, "fetch-worker")
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pipe = client.pipeline(transaction=False)
                for job_id in ids:
                    pipe.hget(f"genq:job:{job_id}", "status")
                if all(status == "succeeded" for status in pipe.execute()):
                    break
                time.sleep(0.2)
        finally:
            worker.terminate()
            worker.wait(timeout=15)
        stats = client.info("commandstats")
    assert all(store.get(job_id).status == "succeeded" for job_id in ids)  # type: ignore[union-attr]
    assert stats["cmdstat_eval"]["calls"] >= 1
    # One BRPOP per job without the batch fetch; a few with it (mingle's replies, idle
    # polls of this and the session's in-process worker, one after each empty fetch).
    assert stats["cmdstat_brpop"]["calls"] < JOBS / 2
