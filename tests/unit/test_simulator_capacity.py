"""The upstream simulator's provider capacity: its config, the gate as a unit, and the gate
over real loopback HTTP (reject with 429, queue, load latency, run-time changes, stop)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack

import pytest
import requests

from simulator import ConfigError, SimulatorConfig, SimulatorServer
from simulator.behaviour import Call, Overflow, decide
from simulator.protocols import parse_request, route
from simulator.server import Control

TIMEOUT = (2.0, 5.0)
TGI_429 = {"error": "Model is overloaded", "error_type": "overloaded"}


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


def tgi_call() -> Call:
    """A readable tgi ``POST /generate`` call, as the server builds it."""
    target = route("/generate")
    assert target is not None
    return Call(target, "m", "/generate", parse_request(target, b'{"inputs": "a b"}'))


def post(sim: SimulatorServer, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"inputs": "a b"}
    return requests.post(f"{sim.url}/generate", json=body, headers=headers, timeout=TIMEOUT)


def post_together(sim: SimulatorServer, count: int) -> list[requests.Response]:
    """``count`` calls from as many threads, released at once by a barrier."""
    barrier = threading.Barrier(count)

    def one(_: int) -> requests.Response:
        barrier.wait()
        return post(sim)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def submit(pool: ThreadPoolExecutor, sim: SimulatorServer, count: int) -> list[Future[int]]:
    """Start ``count`` calls in the background; each future gives its status code."""
    return [pool.submit(lambda: post(sim).status_code) for _ in range(count)]


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the simulator never reached the expected state"
        time.sleep(0.01)


def stat(sim: SimulatorServer, key: str) -> int:
    value = sim.stats()[key]
    assert isinstance(value, int)
    return value


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": -2}, "capacity"),
        ({"capacity": 2.5}, "capacity"),
        ({"capacity": "5"}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"overflow": "drop"}, "overflow"),
        ({"overflow": None}, "overflow"),
        ({"overflow": 1}, "overflow"),
        ({"load_latency_ms": -1}, "load_latency_ms"),
        ({"load_latency_ms": "10"}, "load_latency_ms"),
        ({"load_latency_ms": None}, "load_latency_ms"),
        ({"load_latency_ms": True}, "load_latency_ms"),
    ],
)
def test_bad_capacity_fields_are_refused_by_name(changes: dict[str, object], field: str) -> None:
    """capacity is a positive integer or null, overflow reject|queue, load_latency_ms ≥ 0."""
    with pytest.raises(ConfigError, match=field):
        SimulatorConfig().merged(changes)


def test_capacity_fields_merge_and_round_trip_through_as_dict() -> None:
    """Good values merge; as_dict serves them as JSON values that merge back to the same config."""
    config = SimulatorConfig().merged({"capacity": 3, "overflow": "queue", "load_latency_ms": 7})
    assert (config.capacity, config.overflow, config.load_latency_ms) == (3, Overflow.QUEUE, 7.0)
    served = config.as_dict()
    assert (served["capacity"], served["overflow"], served["load_latency_ms"]) == (3, "queue", 7.0)
    assert type(served["overflow"]) is str
    assert SimulatorConfig().merged(served) == config
    assert config.merged({"capacity": None}).capacity is None
    defaults = SimulatorConfig().as_dict()
    assert (defaults["capacity"], defaults["overflow"], defaults["load_latency_ms"]) == (
        None,
        "reject",
        0.0,
    )


def test_config_endpoint_switches_capacity_and_refuses_bad_values(sim: SimulatorServer) -> None:
    """POST /_sim/config sets the capacity fields; a bad one answers 400 naming the field."""
    url = f"{sim.url}/_sim/config"
    config = requests.post(url, json={"capacity": 4, "overflow": "queue"}, timeout=TIMEOUT)
    assert (config.json()["capacity"], config.json()["overflow"]) == (4, "queue")
    refused = requests.post(url, json={"overflow": "later"}, timeout=TIMEOUT)
    assert refused.status_code == 400
    assert "overflow" in refused.json()["error"]


def test_decide_adds_load_latency_for_each_other_call() -> None:
    """decide's delay is latency_ms plus load_latency_ms for each other call being served."""
    config = SimulatorConfig(latency_ms=10, load_latency_ms=100)
    delays = [decide(config, lambda: 0.5, None, tgi_call(), load)[0].delay_s for load in (0, 3)]
    assert delays == pytest.approx([0.01, 0.31])


def test_control_delays_the_nth_concurrent_call_by_its_load() -> None:
    """A new call waits load_latency_ms more for each call holding a place; alone, it does not."""
    control = Control()
    control.configure({"latency_ms": 10, "load_latency_ms": 100})
    with ExitStack() as held:
        delays = [held.enter_context(control.admit(None, tgi_call()))[0].delay_s for _ in range(3)]
        assert control.stats()["in_flight"] == 3
    with control.admit(None, tgi_call()) as (alone, _):
        assert alone.delay_s == pytest.approx(0.01)
    assert delays == pytest.approx([0.01, 0.11, 0.21])
    assert (control.stats()["in_flight"], control.stats()["peak_in_flight"]) == (0, 3)


def test_control_turns_away_a_call_beyond_capacity_without_a_place() -> None:
    """In reject mode the call past capacity gets 429 at once, counted, and holds no place."""
    control = Control()
    control.configure({"capacity": 2, "retry_after_s": 2})
    with ExitStack() as held:
        replies = [held.enter_context(control.admit(None, tgi_call()))[0] for _ in range(3)]
        assert control.stats()["in_flight"] == 2
    assert [r.status for r in replies] == [200, 200, 429]
    assert (replies[2].body, replies[2].headers, replies[2].delay_s) == (
        TGI_429,
        (("Retry-After", "2"),),
        0.0,
    )
    stats = control.stats()
    assert (stats["calls"], stats["over_capacity"], stats["peak_concurrent"]) == (3, 1, 3)
    assert stats["by_outcome"] == {"ok": 2, "over_capacity": 1}
    assert (stats["in_flight"], stats["waiting"]) == (0, 0)


def test_reject_mode_answers_429_beyond_capacity(sim: SimulatorServer) -> None:
    """Capacity 5, 20 calls at once: 5 answered, 15 get 429 with Retry-After and TGI's body."""
    sim.configure(capacity=5, latency_ms=200, retry_after_s=0.5)
    answers = post_together(sim, 20)
    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert (len(ok), len(refused)) == (5, 15)
    assert all(a.headers["Retry-After"] == "0.5" and a.json() == TGI_429 for a in refused)
    stats = requests.get(f"{sim.url}/_sim/stats", timeout=TIMEOUT).json()
    assert (stats["peak_in_flight"], stats["over_capacity"], stats["calls"]) == (5, 15, 20)
    assert stats["peak_concurrent"] >= 6
    assert stats["by_outcome"] == {"ok": 5, "over_capacity": 15}
    assert (stats["in_flight"], stats["waiting"]) == (0, 0)


def test_queue_mode_serves_every_call_in_rounds_of_capacity(sim: SimulatorServer) -> None:
    """Capacity 5, queue, 20 calls at once: all 200, never more than 5 served, ≈ 4 rounds."""
    sim.configure(capacity=5, overflow="queue", latency_ms=200)
    started = time.perf_counter()
    answers = post_together(sim, 20)
    elapsed = time.perf_counter() - started
    assert [a.status_code for a in answers] == [200] * 20
    assert 0.79 <= elapsed < 1.6, f"20 calls in rounds of 5 x 0.2 s took {elapsed:.2f} s"
    stats = sim.stats()
    assert (stats["peak_in_flight"], stats["over_capacity"], stats["calls"]) == (5, 0, 20)
    assert stat(sim, "peak_concurrent") > 5
    assert (stats["in_flight"], stats["waiting"]) == (0, 0)


def test_load_latency_slows_calls_served_together(sim: SimulatorServer) -> None:
    """latency 50 ms + 100 ms per other call: 4 calls at once take ≈ 0.35 s, one alone 0.05 s."""
    sim.configure(latency_ms=50, load_latency_ms=100)
    started = time.perf_counter()
    assert post(sim).status_code == 200
    alone = time.perf_counter() - started
    started = time.perf_counter()
    assert [a.status_code for a in post_together(sim, 4)] == [200] * 4
    together = time.perf_counter() - started
    assert 0.05 <= alone < 0.15
    assert together >= 0.25, f"4 calls served together took {together:.2f} s"


def test_faults_hold_their_place_and_the_gate_comes_before_the_token(
    sim: SimulatorServer,
) -> None:
    """A hanging call holds its place; a call past capacity gets 429 before any 401."""
    sim.configure(capacity=1, mode="hang", hang_s=0.3, require_token="t")
    with ThreadPoolExecutor(1) as pool:
        hanging = pool.submit(lambda: post(sim, "t").status_code)
        wait_for(lambda: stat(sim, "in_flight") == 1)
        assert post(sim).status_code == 429
        assert hanging.result() == 200
    assert post(sim).status_code == 401  # a free place: now the token is checked
    assert sim.stats()["by_outcome"] == {"hang": 1, "over_capacity": 1, "error_401": 1}


def test_a_dropped_call_frees_its_place(sim: SimulatorServer) -> None:
    """Mode down closes the connection and gives the place back: the next call is not a 429."""
    sim.configure(capacity=1, mode="down")
    for _ in range(3):
        with pytest.raises(requests.ConnectionError):
            post(sim)
    assert (stat(sim, "in_flight"), stat(sim, "over_capacity")) == (0, 0)


def test_a_client_calling_again_after_its_answer_is_never_over_capacity(
    sim: SimulatorServer,
) -> None:
    """Capacity 1: 100 calls one after another, each on a new connection, all get 200."""
    sim.configure(capacity=1)
    assert [post(sim).status_code for _ in range(100)] == [200] * 100
    assert (stat(sim, "peak_concurrent"), stat(sim, "over_capacity")) == (1, 0)


def test_leave_gives_the_place_back_once() -> None:
    """leave() frees the place before the block ends; the block's end does not free it twice."""
    control = Control()
    control.configure({"capacity": 1})
    with control.admit(None, tgi_call()) as (_, leave):
        leave()
        with control.admit(None, tgi_call()) as (second, _):
            assert second.status == 200
            assert control.stats()["in_flight"] == 1
    assert (control.stats()["in_flight"], control.stats()["peak_in_flight"]) == (0, 1)


def test_raising_capacity_at_run_time_lets_queued_calls_through(sim: SimulatorServer) -> None:
    """Capacity 1 with 4 calls queued: configure(capacity=5) admits them at once."""
    sim.configure(capacity=1, overflow="queue", latency_ms=400)
    with ThreadPoolExecutor(5) as pool:
        started = time.perf_counter()
        calls = submit(pool, sim, 5)
        wait_for(lambda: stat(sim, "waiting") == 4)
        assert (stat(sim, "in_flight"), stat(sim, "peak_concurrent")) == (1, 5)
        sim.configure(capacity=5)
        assert [c.result() for c in calls] == [200] * 5
        elapsed = time.perf_counter() - started
    assert elapsed < 1.2, f"queued calls took {elapsed:.2f} s; one at a time is 2 s"
    assert stat(sim, "peak_in_flight") == 5


def test_reset_lets_queued_calls_through_and_keeps_places_held(sim: SimulatorServer) -> None:
    """Reset drops the capacity (queued calls go through) and zeroes counters, not in_flight."""
    sim.configure(capacity=1, overflow="queue", latency_ms=300)
    with ThreadPoolExecutor(3) as pool:
        calls = submit(pool, sim, 3)
        wait_for(lambda: stat(sim, "waiting") == 2)
        sim.reset()
        wait_for(lambda: stat(sim, "calls") == 2 and stat(sim, "in_flight") == 1)
        assert (stat(sim, "waiting"), stat(sim, "over_capacity")) == (0, 0)
        assert [c.result() for c in calls] == [200] * 3
    assert stat(sim, "in_flight") == 0


def test_stop_drops_queued_calls_promptly() -> None:
    """stop() with a call held for 5 s and 3 queued returns at once; every client is cut off."""
    server = SimulatorServer().start()
    server.configure(capacity=1, overflow="queue", latency_ms=5000)
    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(post, server) for _ in range(4)]
        wait_for(lambda: stat(server, "waiting") == 3)
        started = time.perf_counter()
        server.stop()
        stopped = time.perf_counter() - started
        for call in calls:
            with pytest.raises(requests.ConnectionError):
                call.result(timeout=2.0)
        cut_off = time.perf_counter() - started
    assert stopped < 1.0, f"stop() took {stopped:.2f} s"
    assert cut_off < 1.5, f"clients were cut off after {cut_off:.2f} s"
    assert (stat(server, "waiting"), stat(server, "in_flight")) == (0, 0)
