"""The shared breaker against pybreaker, in one run on one redis-server this script starts.

(a) one thread, a no-op guarded function: calls/s (best of three 0.5 s runs, as machines
    are shared) and Redis round trips per call, on the closed path and while rejecting
    (open), for genq, pybreaker + CircuitRedisStorage and pybreaker's memory storage.
    Round trips (requests written to the socket: a counting connection) and commands
    (INFO commandstats deltas, with those genq's Lua scripts run) are averaged over the
    three runs; each lasts at least twice ``DEFAULT_VIEW_TTL_S``, so genq's closed figure includes
    its view refreshes. Also genq's closed path with ``window_s``.
(b) 16 threads, one breaker per process, a 50 ms guarded ``time.sleep``: throughput of
    genq and of pybreaker + Redis storage against no breaker.
(c) 4 processes x 4 threads through a 10 s simulator outage, reset_timeout 1 s: upstream
    calls made during the outage, genq against pybreaker + Redis storage.

Run: ``python -m bench.breaker_bench`` (about a minute). Writes docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pybreaker
import redis
import requests

from bench.report import machine, write_section
from core.circuits import snapshot
from core.errors import UpstreamUnavailable
from devstack.redis import RedisProcess, ensure_redis_server
from simulator.server import SimulatorServer
from worker.breaker import DEFAULT_VIEW_TTL_S, SharedCircuitBreaker

FAIL_MAX, OUTAGE_S, RESET_S, PROCESSES, THREADS = 5, 10.0, 1.0, 4, 4
RUN_S, WARMUP_S = 0.5, 0.3  # (a): one timed run; the warm-up spans one DEFAULT_VIEW_TTL_S as well
WINDOWED = "genq closed, window_s"  # measured in (a), reported under its table


class CountingConnection(redis.Connection):
    """Counts requests written to Redis: one per round trip (a pipeline is one)."""

    writes = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.writes += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def counting_client(url: str, *, decode: bool) -> redis.Redis:
    pool = redis.ConnectionPool.from_url(
        url, connection_class=CountingConnection, decode_responses=decode
    )
    return redis.Redis(connection_pool=pool)


def pybreaker_redis(client: redis.Redis, name: str, **options: Any) -> pybreaker.CircuitBreaker:
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=name)
    return pybreaker.CircuitBreaker(state_storage=storage, **options)


def measure(fn: Callable[[], None], admin: redis.Redis, rounds: int = 3) -> dict[str, float]:
    """Best of ``rounds`` RUN_S runs of ``fn``: calls/s; round trips, commands over all runs."""
    warm = time.perf_counter() + WARMUP_S  # connect, load scripts (genq's RECORD at a refresh)
    while time.perf_counter() < warm:
        fn()
    admin.config_resetstat()
    writes, total, best = CountingConnection.writes, 0, 0.0
    for _ in range(rounds):
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < RUN_S:
            for _ in range(100):
                fn()
            calls += 100
        best, total = max(best, calls / (time.perf_counter() - started)), total + calls
    stats = admin.info("commandstats")
    commands = sum(
        v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config")
    )
    rts = CountingConnection.writes - writes
    return {"rate": best, "rt": rts / total, "cmds": commands / total, "trips": rts, "calls": total}


def quietly(call: Callable[..., object]) -> Callable[[], None]:
    def run() -> None:
        try:  # noqa: SIM105 - contextlib.suppress costs more than the call being timed
            call(lambda: None)
        except pybreaker.CircuitBreakerError:
            pass

    return run


def single_thread(url: str) -> dict[str, dict[str, float]]:
    """(a): closed and open paths of the three breakers, and genq's closed path with a window."""
    assert RUN_S >= 2 * DEFAULT_VIEW_TTL_S, "each run must span view refreshes"
    admin = redis.Redis.from_url(url)
    client, name = counting_client(url, decode=True), f"a-{uuid.uuid4().hex[:6]}"
    genq = SharedCircuitBreaker(name, client, fail_max=1, reset_timeout=600.0)
    windowed = SharedCircuitBreaker(f"{name}-w", client, window_s=10.0, failure_rate_threshold=0.5)
    pyb = pybreaker_redis(
        counting_client(url, decode=False),
        f"a-{uuid.uuid4().hex[:6]}",
        fail_max=1,
        reset_timeout=600,
    )
    mem = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=600)
    out = {}
    for label, cb in (("genq", genq), ("pybreaker Redis", pyb), ("pybreaker memory", mem)):
        out[f"{label} closed"] = measure(quietly(cb.call), admin)
    out[WINDOWED] = measure(quietly(windowed.call), admin)
    for label, cb in (("genq", genq), ("pybreaker Redis", pyb), ("pybreaker memory", mem)):
        with contextlib.suppress(UpstreamUnavailable, pybreaker.CircuitBreakerError):
            cb.call(boom)  # trips it: fail_max=1
        out[f"{label} open"] = measure(quietly(cb.call), admin)
    return out


def boom() -> None:
    raise UpstreamUnavailable("down", status=503)


def threaded(url: str, seconds: float = 2.0) -> dict[str, float]:
    """(b): 16 threads each calling a 50 ms function as often as they can."""
    genq = SharedCircuitBreaker(
        f"b-{uuid.uuid4().hex[:6]}", redis.Redis.from_url(url, decode_responses=True)
    )
    pyb = pybreaker_redis(redis.Redis.from_url(url), f"b-{uuid.uuid4().hex[:6]}")
    variants: dict[str, Callable[[], object]] = {
        "no breaker": lambda: time.sleep(0.05),
        "genq": lambda: genq.call(time.sleep, 0.05),
        "pybreaker Redis": lambda: pyb.call(time.sleep, 0.05),
    }
    return {label: run_threads(fn, 16, seconds) for label, fn in variants.items()}


def run_threads(fn: Callable[[], object], count: int, seconds: float) -> float:
    """Calls/s of ``count`` threads calling ``fn`` back to back for ``seconds``."""
    done = [0] * count
    deadline = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < deadline:
            fn()
            done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def call_simulator(session: requests.Session, url: str) -> None:
    reply = session.post(f"{url}/generate", json={"inputs": "hello"}, timeout=5)
    if reply.status_code != 200:
        raise UpstreamUnavailable(
            f"simulator answered {reply.status_code}", status=reply.status_code
        )


def outage_worker(
    kind: str, redis_url: str, name: str, sim_url: str, ready: Any, stop: Any
) -> None:
    """One process of (c): THREADS threads call the simulator through one breaker."""
    if kind == "genq":
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        call: Callable[..., object] = SharedCircuitBreaker(
            name,
            client,
            fail_max=FAIL_MAX,
            reset_timeout=RESET_S,
            max_reset_timeout=RESET_S,
            probe_lease_s=5.0,
        ).call
    else:
        call = pybreaker_redis(
            redis.Redis.from_url(redis_url), name, fail_max=FAIL_MAX, reset_timeout=RESET_S
        ).call

    def loop() -> None:
        session = requests.Session()
        while not stop.is_set():
            with contextlib.suppress(UpstreamUnavailable, pybreaker.CircuitBreakerError):
                call(call_simulator, session, sim_url)
            time.sleep(0.01)

    threads = [threading.Thread(target=loop) for _ in range(THREADS)]
    for t in threads:
        t.start()
    ready.wait()
    for t in threads:
        t.join()


def outage(url: str, kind: str, sim: SimulatorServer) -> dict[str, int]:
    """(c) for one breaker: upstream calls the simulator saw during a 10 s outage."""
    ctx = mp.get_context("spawn")
    name, ready, stop = f"c-{uuid.uuid4().hex[:6]}", ctx.Barrier(PROCESSES + 1), ctx.Event()
    sim.reset()
    args = (kind, url, name, sim.url, ready, stop)
    procs = [ctx.Process(target=outage_worker, args=args) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    ready.wait(timeout=60)
    time.sleep(1.0)
    before = sim.stats()["by_outcome"]
    sim.configure(mode="outage")
    time.sleep(OUTAGE_S)
    admin = redis.Redis.from_url(url)
    windows = snapshot(admin, name)["transitions"]["half_open"] if kind == "genq" else 0
    sim.configure(mode="ok")
    after = sim.stats()["by_outcome"]
    stop.set()
    for p in procs:
        p.join(timeout=30)
    assert isinstance(before, dict) and isinstance(after, dict)
    return {"calls": after.get("error_503", 0) - before.get("error_503", 0), "windows": windows}


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def per_call(value: float) -> str:
    """A per-call figure: two decimals, or two significant digits when it is that small."""
    return f"{value:.2f}" if value == 0 or value >= 0.01 else f"{value:.1e}"


def closed_note(a: dict[str, dict[str, float]]) -> list[str]:
    """What genq's closed-path round trips are, and the cost with a rate window."""
    g, window, ttl = a["genq closed"], a[WINDOWED], DEFAULT_VIEW_TTL_S
    seconds, ratio = 3 * RUN_S, window["rate"] / a["pybreaker Redis closed"]["rate"]
    return [
        f"genq closed: {g['trips']:.0f} round trips in {g['calls']:,.0f} calls ({seconds} s), one"
        f" per view TTL = {ttl} s (~{seconds / ttl:.0f} expected) to refresh the view: an ADMIT,",
        "or the RECORD of the call in flight as it went stale; the other successes wrote nothing.",
        f"`window_s` records every success: {window['rate']:,.0f} calls/s, "
        f"{per_call(window['rt'])} round trips/call, {ratio:.2f}x pybreaker Redis.",
    ]


def render(
    a: dict[str, dict[str, float]], b: dict[str, float], c: dict[str, dict[str, int]]
) -> str:
    closed = a["genq closed"]["rate"] / a["pybreaker Redis closed"]["rate"]
    rejecting = a["genq open"]["rate"] / a["pybreaker Redis open"]["rate"]
    rows = [
        f"| {k} | {v['rate']:,.0f} | {per_call(v['rt'])} | {per_call(v['cmds'])} |"
        for k, v in a.items()
        if k != WINDOWED
    ]
    genq, pyb = c["genq"], c["pybreaker"]
    expected = FAIL_MAX + genq["windows"]
    excess = genq["calls"] - expected
    return "\n".join(
        [
            "## Shared circuit breaker vs pybreaker (issue #3)",
            "",
            f"{machine()}. One redis-server started by the bench; ratios from this one run.",
            "",
            f"(a) One thread, no-op guarded function, best of three {RUN_S} s runs. Round trips:",
            "requests written to Redis; commands: INFO commandstats (genq's include those its Lua",
            "scripts run); both averaged over the three runs.",
            "",
            "| breaker, path | calls/s | round trips/call | Redis commands/call |",
            "|---|---|---|---|",
            *rows,
            "",
            *closed_note(a),
            "",
            "| ratio | measured | target |",
            "|---|---|---|",
            f"| genq / pybreaker Redis, closed | {closed:.2f}x "
            f"| >= 1.8x: {verdict(closed >= 1.8)} |",
            f"| genq / pybreaker Redis, rejecting | {rejecting:.0f}x | "
            f">= 50x: {verdict(rejecting >= 50)} |",
            "",
            "(b) 16 threads, one breaker per process, guarded `time.sleep(0.05)`:",
            "",
            "| breaker | calls/s | vs no breaker | target |",
            "|---|---|---|---|",
            f"| no breaker | {b['no breaker']:.0f} | 1.00 | |",
            f"| genq | {b['genq']:.0f} | {b['genq'] / b['no breaker']:.2f} | >= 0.9: "
            f"{verdict(b['genq'] / b['no breaker'] >= 0.9)} |",
            f"| pybreaker Redis | {b['pybreaker Redis']:.0f} | "
            f"{b['pybreaker Redis'] / b['no breaker']:.2f} | (lock held across the call) |",
            "",
            f"(c) {PROCESSES} processes x {THREADS} threads, {OUTAGE_S:.0f} s simulator outage, "
            f"fail_max {FAIL_MAX}, reset_timeout {RESET_S:.0f} s (genq: max_reset_timeout "
            f"{RESET_S:.0f} s, so windows do not grow):",
            "",
            "| breaker | upstream calls in the outage | target |",
            "|---|---|---|",
            f"| genq | {genq['calls']} = {FAIL_MAX} + {genq['windows']} probes "
            f"+ {excess} in flight "
            f"| fail_max + 1 probe per window (+ in-flight <= {PROCESSES * THREADS - 1}): "
            f"{verdict(0 <= excess <= PROCESSES * THREADS - 1)} |",
            f"| pybreaker Redis | {pyb['calls']} | (baseline) |",
        ]
    )


def main() -> None:
    server = RedisProcess(ensure_redis_server(say=lambda _: None))
    server.start()
    try:
        a = single_thread(server.url)
        b = threaded(server.url)
        with SimulatorServer() as sim:
            c = {kind: outage(server.url, kind, sim) for kind in ("genq", "pybreaker")}
    finally:
        server.stop()
    table = render(a, b, c)
    write_section("breaker", table)
    print(table)


if __name__ == "__main__":
    main()
