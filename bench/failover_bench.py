"""Issue #23's bench: failover costs no waiting.

Run: ``python -m bench.failover_bench [N]`` (N = 2,000 jobs). Writes the "failover"
section of docs/benchmarks.md. One redis-server, two simulator processes (the primary and
a failover target, each answering in 50 ms), one worker on
genq's defaults (pool, concurrency, the adaptive call limit, the breaker) with
``GENQ_UPSTREAM_FAILOVER`` naming the second simulator. Both speak ``hf``, so the two
runs differ only in which target answers (another protocol would change the work a
call costs the worker).

- Primary up: N jobs queued, then the worker drains them (every answer the primary's).
- Primary down (it drops every connection): the same N jobs; the first calls fail, the
  primary's circuit opens, and every job is answered by the failover target.

The two runs alternate, ``ROUNDS`` times, each on a flushed Redis (the call limits and the
circuits start cold alike). Reported: jobs/s worker-side (first start to last finish),
the median of each round's down / up ratio (target ≥ 0.9), the answers by target and the
degraded ones (target: 0), and the primary's calls in the down run.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import requests

from bench.harness import (
    CONCURRENCY,
    POOL,
    Env,
    _answers,
    _spawn,
    _wait,
    bench_env,
    drain_rate_genq,
    publish_genq,
    reset,
    worker,
)
from bench.report import machine, write_section
from devstack.redis import free_port

LATENCY_MS = 50
ROUNDS = 3
SECOND_MODEL = "simulator/echo-2"


@contextmanager
def second_simulator() -> Iterator[str]:
    """The failover target: another simulator process."""
    port = free_port()
    proc = _spawn([sys.executable, "-m", "simulator", "--port", str(port)], {}, "simulator-2")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _answers(f"{url}/_sim/health"), 15, "the second simulator")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def configure(url: str, **config: object) -> None:
    requests.post(f"{url}/_sim/reset", timeout=5).raise_for_status()
    requests.post(f"{url}/_sim/config", json=config, timeout=5).raise_for_status()


def calls(url: str) -> int:
    return int(requests.get(f"{url}/_sim/stats", timeout=5).json()["calls"])


@dataclass(frozen=True)
class Run:
    """One drain: jobs/s, answers by (source or failover, degraded), calls per simulator."""

    rate: float
    answers: dict[tuple[str, bool], int]
    primary_calls: int
    second_calls: int

    @property
    def degraded(self) -> int:
        return sum(count for (_, degraded), count in self.answers.items() if degraded)

    def answers_text(self) -> str:
        names = {("failover", False): "failover", ("upstream", False): "primary"}
        return ", ".join(
            f"{names.get(key, key[0] + (' (degraded)' if key[1] else ''))} {count}"
            for key, count in sorted(self.answers.items())
        )


def run(env: Env, second: str, n: int, primary_down: bool) -> Run:
    """One drain of n jobs; jobs/s, answers by (target, degraded), calls per simulator."""
    reset(env)
    env.simulator(latency_ms=LATENCY_MS, mode="down" if primary_down else "ok")
    configure(second, latency_ms=LATENCY_MS)
    failover = [{"url": second, "protocol": "hf", "model": SECOND_MODEL}]
    ids = publish_genq(env, n)
    with worker(env, "worker.app", POOL, CONCURRENCY, GENQ_UPSTREAM_FAILOVER=json.dumps(failover)):
        rate = drain_rate_genq(env, ids)
    pipe = env.client().pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(f"genq:job:{job_id}", "result")
    results = [json.loads(raw) if raw else {} for raw in pipe.execute()]
    answers = Counter(
        ("failover" if r.get("failover") else r.get("source", "failed"), bool(r.get("degraded")))
        for r in results
    )
    return Run(rate, dict(answers), calls(env.simulator_url), calls(second))


def main(n: int = 2_000) -> None:
    rounds = []
    with bench_env() as env, second_simulator() as second:
        for i in range(ROUNDS):
            up = run(env, second, n, primary_down=False)
            down = run(env, second, n, primary_down=True)
            rounds.append((up, down))
            print(f"round {i + 1}: up {up}, down {down}", flush=True)
    ratios = sorted(down.rate / up.rate for up, down in rounds)
    median = ratios[len(ratios) // 2]
    degraded = sum(down.degraded for _, down in rounds)
    ok = lambda good: "met" if good else "NOT met"  # noqa: E731
    rows = [
        f"| {i + 1} | {up.rate:.0f} | {down.rate:.0f} | {down.rate / up.rate:.2f} "
        f"| {down.answers_text()} | {down.primary_calls} | {down.second_calls} |"
        for i, (up, down) in enumerate(rounds)
    ]
    section = [
        "## Failover: another provider answers (issue #23)",
        "",
        f"`python -m bench.failover_bench` ({machine()}). Two simulators answering in "
        f"{LATENCY_MS} ms, both `hf`: the primary and a failover target "
        "(`GENQ_UPSTREAM_FAILOVER`); one worker on genq's defaults (pool "
        f"{POOL}, concurrency {CONCURRENCY}, the adaptive call limit, the breaker). {n:,} "
        "jobs queued, then drained, with the primary up and with it down (it drops every "
        f"connection), in turns, {ROUNDS} rounds, Redis flushed before each run.",
        "",
        "| round | primary up, jobs/s | primary down, jobs/s | down / up | answers while down "
        "| primary's calls while down | failover target's calls while down |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"**Median down / up: {median:.2f}** (target ≥ 0.9: {ok(median >= 0.9)}); degraded "
        f"answers while the primary was down: **{degraded}** (target 0: {ok(degraded == 0)}). "
        "The primary's calls while down are the ones its circuit let through: the failures "
        "that tripped it (the calls in flight when it tripped among them) and its probes.",
    ]
    write_section("failover", "\n".join(section))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
