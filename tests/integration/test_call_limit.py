"""core.capacity and worker.limiter on a real redis-server: one limit for every process,
slots that come back when their holder dies, and AIMD moves that follow the outcomes."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import deque

import pytest
import redis
import requests

from core import capacity, circuits, keys
from core.capacity import CallOutcome, CapacityStore, LimitOptions
from core.errors import UpstreamRateLimited, UpstreamTimeout
from core.settings import Settings
from tests.integration.conftest import auth
from worker.limiter import ConcurrencyLimiter
from worker.upstream import UpstreamTarget

pytestmark = pytest.mark.integration


@pytest.fixture
def target() -> str:
    return f"test~{uuid.uuid4().hex}"


def store_with(r: redis.Redis, **options: object) -> CapacityStore:
    return CapacityStore(r, LimitOptions(**options))  # type: ignore[arg-type]


def fill(store: CapacityStore, target: str, count: int) -> list[tuple[str, int]]:
    """Take ``count`` slots; returns (token, epoch) of each."""
    held = []
    for i in range(count):
        grant = store.try_acquire(target, f"t{i}")
        assert grant.granted, f"slot {i} refused at limit {grant.limit}"
        held.append((f"t{i}", grant.epoch))
    return held


def test_a_fixed_limit_grants_that_many_slots_and_no_more(r: redis.Redis, target: str) -> None:
    store = store_with(r, mode="fixed", ceiling=3)
    fill(store, target, 3)
    refused = store.try_acquire(target, "extra")
    assert (refused.granted, refused.in_flight, refused.limit) == (False, 3, 3.0)
    store.release(target, "t0", CallOutcome.THROTTLED, 0)
    assert store.try_acquire(target, "extra").granted
    # A fixed limit never moves, whatever the outcomes.
    assert capacity.snapshot(r, target) == {
        "mode": "fixed",
        "limit": 3,
        "floor": 1,
        "ceiling": 3,
        "in_flight": 3,
        "interactive_waiting": 0,
        "batch_waiting": 0,
        "calls": 1,
        "throttled": 1,
        "cuts": 0,
        "waits": 0,
        "wait_timeouts": 0,
        "waited_s": 0.0,
    }


def test_two_processes_share_one_limit(redis_url: str, target: str) -> None:
    """Two clients (as two workers would hold) together get exactly the limit."""
    first = store_with(redis.Redis.from_url(redis_url), mode="fixed", ceiling=4)
    second = store_with(redis.Redis.from_url(redis_url), mode="fixed", ceiling=4)
    stores = list(enumerate((first, second)))
    granted = [s.try_acquire(target, f"{n}-{i}").granted for i in range(5) for n, s in stores]
    assert granted.count(True) == 4


def test_a_dead_holders_slots_come_back_when_their_leases_lapse(
    r: redis.Redis, target: str
) -> None:
    store = store_with(r, mode="fixed", ceiling=2, lease_ms=300)
    fill(store, target, 2)  # and never released: the holder died
    assert not store.try_acquire(target, "waiting").granted
    time.sleep(0.35)
    assert store.try_acquire(target, "waiting").granted
    assert capacity.snapshot(r, target)["in_flight"] == 1  # type: ignore[index]


def test_a_renewed_slot_outlives_its_lease_and_a_released_one_stays_released(
    r: redis.Redis, target: str
) -> None:
    """The holder's heartbeat keeps a slot past its lease; a renewal never brings back a
    slot that was released (or that lapsed and was taken by another)."""
    store = store_with(r, mode="fixed", ceiling=2, lease_ms=300)
    (kept, epoch), (lapsed, _) = fill(store, target, 2)
    for _ in range(3):
        time.sleep(0.2)
        store.renew([(target, kept)])
    assert store.try_acquire(target, "late").granted  # the unrenewed slot lapsed
    assert not store.try_acquire(target, "later").granted  # the renewed one is held
    store.renew([(target, kept), (target, lapsed)])
    assert capacity.snapshot(r, target)["in_flight"] == 2  # type: ignore[index]
    store.release(target, kept, CallOutcome.NEUTRAL, epoch)
    store.renew([(target, kept)])
    assert capacity.snapshot(r, target)["in_flight"] == 1  # type: ignore[index]


def test_slow_start_triples_then_a_429_cuts_once_per_epoch(r: redis.Redis, target: str) -> None:
    store = store_with(r, initial=4, ceiling=100)
    names = (f"x{i}" for i in itertools.count())
    held: list[tuple[str, int]] = []

    def refill() -> None:  # a backlog: every free slot is taken at once
        while (grant := store.try_acquire(target, token := next(names))).granted:
            held.append((token, grant.epoch))

    refill()
    for _ in range(4):  # the limit is full: each success adds two
        token, epoch = held.pop(0)
        store.release(target, token, CallOutcome.OK, epoch)
        refill()
    snapshot = capacity.snapshot(r, target)
    assert snapshot is not None and (snapshot["limit"], snapshot["in_flight"]) == (12, 12)
    # Two 429s granted in the same epoch: only the first cuts.
    first = store.release(target, held[0][0], CallOutcome.THROTTLED, held[0][1])
    second = store.release(target, held[1][0], CallOutcome.THROTTLED, held[1][1])
    assert first.limit == pytest.approx(10.8) and second.limit == pytest.approx(10.8)
    # After the cut, below the limit of the cut (12), it climbs back by at least one per
    # round: 1/limit per success.
    third = store.release(target, held[2][0], CallOutcome.OK, held[2][1])
    assert third.limit == pytest.approx(10.8 + 1 / 10.8)
    # A slot granted after the cut may cut again.
    fresh = store.try_acquire(target, "fresh")
    assert fresh.epoch == 1
    assert store.release(target, "fresh", CallOutcome.CONGESTED, fresh.epoch).limit < 10.8


def test_a_limit_the_demand_does_not_fill_does_not_grow(r: redis.Redis, target: str) -> None:
    """Successes while slots stay free say nothing about the provider's capacity: 8 calls
    at a time under a limit of 10, for 50 rounds, leave it at 10."""
    store = store_with(r, initial=10)
    for _ in range(50):
        for token, epoch in fill(store, target, 8):
            store.release(target, token, CallOutcome.OK, epoch)
    assert capacity.snapshot(r, target)["limit"] == 10  # type: ignore[index]


def test_calls_that_end_together_while_jobs_wait_each_grow_the_limit(
    r: redis.Redis, target: str
) -> None:
    """A round of 8 calls that all end before any waiter takes a slot again (they started
    together, and took as long): a batch item waits meanwhile, so each success grows
    the limit, 8 to 24 in one round, and each slot it grows by wakes a waiter too."""
    store = store_with(r, initial=8, ceiling=100)
    held = fill(store, target, 8)
    assert not store.try_acquire(target, "waiting", wait_ms=5_000).granted
    assert capacity.snapshot(r, target)["batch_waiting"] == 1  # type: ignore[index]
    freed = keys.call_limit(target)[2]
    for token, epoch in held:
        released = store.release(target, token, CallOutcome.OK, epoch)
    assert (released.limit, released.in_flight) == (24, 0)
    assert r.llen(freed) == 24  # a wake-up per freed slot and per slot it grew by
    assert store.try_acquire(target, "waiting").granted  # and it no longer waits
    assert capacity.snapshot(r, target)["batch_waiting"] == 0  # type: ignore[index]
    store.release(target, "waiting", CallOutcome.OK, 0)
    # Nobody waiting, slots free: the same round grows nothing.
    for token, epoch in fill(store, target, 8):
        released = store.release(target, token, CallOutcome.OK, epoch)
    assert released.limit == 24


def test_a_wait_given_up_or_ended_grows_nothing(r: redis.Redis, target: str) -> None:
    store = store_with(r, initial=4, ceiling=100)
    held = fill(store, target, 4)
    assert not store.try_acquire(target, "gave-up", wait_ms=60_000).granted
    assert not store.try_acquire(target, "ran-out", wait_ms=50).granted
    store.note_wait(target, 10, "gave-up")
    time.sleep(0.1)
    for token, epoch in held[:2]:
        store.release(target, token, CallOutcome.NEUTRAL, epoch)
    # Half the limit in use and nobody waiting: a success says nothing about capacity.
    assert store.release(target, held[2][0], CallOutcome.OK, held[2][1]).limit == 4


def test_a_429_at_the_floor_says_so(r: redis.Redis, target: str) -> None:
    store = store_with(r, initial=2, floor=2)
    grant = store.try_acquire(target, "a")
    assert store.release(target, "a", CallOutcome.THROTTLED, grant.epoch).at_floor
    grant = store.try_acquire(target, "b")
    assert not store.release(target, "b", CallOutcome.CONGESTED, grant.epoch).at_floor


def test_the_limiter_marks_a_429_at_the_floor_for_the_breaker(r: redis.Redis, target: str) -> None:
    limiter = ConcurrencyLimiter(store_with(r, initial=3, floor=1))
    marked = []
    for _ in range(40):  # each 429 cuts (a new epoch each time) until the floor
        slot = limiter.acquire(target, 0.0)
        assert slot is not None
        with pytest.raises(UpstreamRateLimited) as caught, limiter.holding(slot):
            raise UpstreamRateLimited("429", status=429)
        marked.append(caught.value.at_floor)
    assert marked[0] is False and marked[-1] is True
    assert capacity.snapshot(r, target)["limit"] == 1  # type: ignore[index]


def test_a_timeout_cuts_and_a_5xx_does_not(r: redis.Redis, target: str) -> None:
    limiter = ConcurrencyLimiter(store_with(r, initial=10))
    for error in (RuntimeError("5xx stand-in"), UpstreamTimeout("slow")):
        slot = limiter.acquire(target, 0.0)
        assert slot is not None
        with pytest.raises(type(error)), limiter.holding(slot):
            raise error
    assert capacity.snapshot(r, target)["cuts"] == 1  # type: ignore[index]


def test_a_waiter_is_woken_by_a_release_not_by_polling(
    r: redis.Redis, redis_url: str, target: str
) -> None:
    """The waiter sits blocked in BLPOP (Redis lists it so), and wakes as soon as the slot
    is released, well before it would look again (WAKE_EVERY_S)."""
    name = f"waiter-{uuid.uuid4().hex[:8]}"
    waiting = ConcurrencyLimiter(
        store_with(redis.Redis.from_url(redis_url, client_name=name), mode="fixed", ceiling=1)
    )
    holder = ConcurrencyLimiter(store_with(r, mode="fixed", ceiling=1))
    held = holder.acquire(target, 0.0)
    assert held is not None
    woke: list[float] = []

    def wait() -> None:
        slot = waiting.acquire(target, 5.0)
        woke.append(time.monotonic())
        assert slot is not None and slot.waited_ms > 0

    def blocked() -> bool:
        mine = [c for c in r.client_list() if c.get("name") == name]
        return bool(mine) and mine[0]["cmd"] == "blpop" and "b" in mine[0]["flags"]

    waiter = threading.Thread(target=wait)
    waiter.start()
    deadline = time.monotonic() + 5
    while not blocked():
        assert time.monotonic() < deadline, "the waiter never blocked in BLPOP"
        time.sleep(0.01)
    time.sleep(0.3)
    assert blocked()  # still: no polling meanwhile
    released = time.monotonic()
    holder.release(held)
    waiter.join(5)
    assert woke and woke[0] - released < 0.5  # woken by the release
    snap = capacity.snapshot(r, target)
    assert snap is not None and snap["waits"] == 1 and snap["waited_s"] > 0.3


def test_a_wait_that_runs_out_gives_none_and_is_counted(r: redis.Redis, target: str) -> None:
    limiter = ConcurrencyLimiter(store_with(r, mode="fixed", ceiling=1))
    assert limiter.acquire(target, 0.0) is not None
    started = time.monotonic()
    assert limiter.acquire(target, 0.2) is None
    assert 0.2 <= time.monotonic() - started < 1.0
    snap = capacity.snapshot(r, target)
    assert snap is not None and snap["wait_timeouts"] == 1


def test_an_interactive_job_waiting_gets_the_next_freed_slot(r: redis.Redis, target: str) -> None:
    """Two batch items hold a fixed limit of 2 and an interactive job waits: the freed
    slot is announced on its own list, a batch item asking first is refused it, and it
    goes to the interactive job. The second freed slot, its one waiter already woken,
    wakes the batch items."""
    store = store_with(r, mode="fixed", ceiling=2)
    fill(store, target, 2)
    _, _, freed, waiters, freed_first, _ = keys.call_limit(target)
    assert not store.try_acquire(target, "interactive", first=True, wait_ms=5000).granted
    assert r.zcard(waiters) == 1
    assert capacity.snapshot(r, target)["interactive_waiting"] == 1  # type: ignore[index]
    store.release(target, "t0", CallOutcome.OK, 0)
    assert (r.llen(freed_first), r.llen(freed)) == (1, 0)  # the waiter is woken, alone
    assert not store.try_acquire(target, "batch").granted  # the slot is kept for it
    store.release(target, "t1", CallOutcome.OK, 0)
    assert (r.llen(freed_first), r.llen(freed)) == (1, 1)  # one wake-up each
    assert store.try_acquire(target, "interactive", 5, first=True).granted
    assert r.zcard(waiters) == 0
    assert store.try_acquire(target, "batch").granted


def test_an_interactive_wait_that_ended_keeps_no_slot(r: redis.Redis, target: str) -> None:
    """A waiter whose wait ran out (or that gave up: ``note_wait``) holds nothing back:
    the next freed slot wakes and goes to batch items."""
    store = store_with(r, mode="fixed", ceiling=1)
    fill(store, target, 1)
    waiters = keys.call_limit(target)[3]
    assert not store.try_acquire(target, "gone", first=True, wait_ms=50).granted
    assert not store.try_acquire(target, "gave-up", first=True, wait_ms=60_000).granted
    store.note_wait(target, 10, "gave-up")
    time.sleep(0.1)
    store.release(target, "t0", CallOutcome.OK, 0)
    _, _, freed, _, freed_first, _ = keys.call_limit(target)
    assert (r.llen(freed), r.llen(freed_first)) == (1, 0)
    assert store.try_acquire(target, "batch").granted
    assert r.zcard(waiters) == 0


def test_a_wake_up_its_waiter_left_goes_to_the_batch_items(r: redis.Redis, target: str) -> None:
    """An interactive job is woken for a freed slot but gives up before taking it: the
    next call to the limit moves that wake-up to the batch items' list, and a batch item
    takes the slot."""
    store = store_with(r, mode="fixed", ceiling=1)
    fill(store, target, 1)
    _, _, freed, _, freed_first, _ = keys.call_limit(target)
    assert not store.try_acquire(target, "interactive", first=True, wait_ms=60_000).granted
    store.release(target, "t0", CallOutcome.OK, 0)
    assert (r.llen(freed), r.llen(freed_first)) == (0, 1)
    store.note_wait(target, 10, "interactive")
    assert store.try_acquire(target, "batch").granted
    assert (r.llen(freed), r.llen(freed_first)) == (1, 0)


def test_an_interactive_waiter_wakes_before_batch_waiters(r: redis.Redis, target: str) -> None:
    """Through the limiter: a batch item waits first, an interactive job after it; the
    one freed slot goes to the interactive job, and the batch item gets the next."""
    limiter = ConcurrencyLimiter(store_with(r, mode="fixed", ceiling=1))
    held = limiter.acquire(target, 0.0)
    assert held is not None
    order: list[str] = []

    def wait(name: str, first: bool) -> None:
        slot = limiter.acquire(target, 5.0, first=first)
        assert slot is not None
        order.append(name)
        time.sleep(0.1)
        limiter.release(slot)

    batch = threading.Thread(target=wait, args=("batch", False))
    batch.start()
    time.sleep(0.2)  # the batch item waits first
    interactive = threading.Thread(target=wait, args=("interactive", True))
    interactive.start()
    time.sleep(0.2)
    limiter.release(held)
    batch.join(5)
    interactive.join(5)
    assert order == ["interactive", "batch"]


def test_an_unused_target_has_no_snapshot(r: redis.Redis, target: str) -> None:
    assert capacity.snapshot(r, target) is None


class ModelledProvider:
    """Calls through ``store`` to a provider that serves ``capacity`` calls at once: a call
    granted while more are in flight is answered 429 at once; the others succeed in the
    order they started, each freed slot taken again at once (a backlog of jobs)."""

    def __init__(self, store: CapacityStore, target: str) -> None:
        self.store, self.target = store, target
        self.capacity, self.calls, self.throttled = 0, 0, 0
        self._held: deque[tuple[str, int]] = deque()
        self._tokens = itertools.count()

    def run(self, completions: int) -> list[float]:
        """Let ``completions`` calls succeed; returns the limit after each."""
        limits = []
        for _ in range(completions):
            self._refill()
            token, epoch = self._held.popleft()
            released = self.store.release(self.target, token, CallOutcome.OK, epoch)
            self.calls += 1
            limits.append(released.limit)
        return limits

    def _refill(self) -> None:
        while (
            grant := self.store.try_acquire(self.target, token := str(next(self._tokens)))
        ).granted:
            if grant.in_flight > self.capacity:
                self.store.release(self.target, token, CallOutcome.THROTTLED, grant.epoch)
                self.calls, self.throttled = self.calls + 1, self.throttled + 1
            else:
                self._held.append((token, grant.epoch))


def test_the_limit_finds_the_capacity_and_follows_it(r: redis.Redis, target: str) -> None:
    """A backlog of calls against a modelled provider: the limit converges to its
    capacity with under 1% 429s, falls when the capacity falls and climbs back."""
    provider = ModelledProvider(store_with(r, initial=4, ceiling=500), target)
    provider.capacity = 40
    provider.run(2_000)  # slow start and the first cuts
    calls, throttled = provider.calls, provider.throttled
    limits = provider.run(4_000)  # 100 rounds of 40 calls
    rate = (provider.throttled - throttled) / (provider.calls - calls)
    print(f"429s {rate:.4f}, limit {min(limits):.1f}..{max(limits):.1f}")
    assert rate < 0.01
    assert min(limits) >= 0.85 * 40 and max(limits) < 42
    provider.capacity = 10  # the provider shrinks: each call granted after a cut is a 429
    limits = provider.run(200)  # that cuts again, as soon as a slot frees
    first = next(i for i, limit in enumerate(limits) if limit < 11)
    print(f"down to 11 after {first} calls")
    assert first < 80 and max(limits[first:]) < 12
    provider.capacity = 40  # and grows back: gently near the last cut, then faster
    limits = provider.run(2_000)
    first = next(i for i, limit in enumerate(limits) if limit >= 36)
    print(f"back to 36 after {first} calls ({first / 10:.0f} rounds of 10)")
    assert first < 1_000


def test_circuits_and_metrics_show_each_targets_limit(
    api_url: str, r: redis.Redis, genq_settings: Settings
) -> None:
    """``GET /v1/circuits`` and ``/metrics`` show a target's limit and calls in flight."""
    model = f"simulator/limit-{uuid.uuid4().hex[:8]}"
    name = UpstreamTarget.from_settings(genq_settings, model).name
    circuits.reset(r, name, genq_settings.breaker_reset_timeout_s)  # the circuit exists
    store = store_with(r, mode="fixed", ceiling=7)
    for i in range(7):
        assert store.try_acquire(name, f"api-{i}").granted
    assert not store.try_acquire(name, "waiting", first=True, wait_ms=30_000).granted
    listed = requests.get(f"{api_url}/v1/circuits", headers=auth(), timeout=5).json()
    shown = next(c for c in listed if c["name"] == name)
    assert shown["limit"]["mode"] == "fixed"
    limit = shown["limit"]
    assert (limit["limit"], limit["in_flight"], limit["interactive_waiting"]) == (7, 7, 1)
    expected = [
        f'genq_upstream_limit{{circuit="{name}"}} 7.0',
        f'genq_upstream_in_flight{{circuit="{name}"}} 7.0',
        f'genq_upstream_interactive_waiting{{circuit="{name}"}} 1.0',
    ]
    deadline = time.monotonic() + 8  # the API's monitor reads the cluster every 5 s
    while not all(line in (text := metrics(api_url)) for line in expected):
        assert time.monotonic() < deadline, "the limit never reached /metrics"
        time.sleep(0.5)
    assert "genq_upstream_slot_wait_seconds_total" in text


def metrics(api_url: str) -> str:
    return requests.get(f"{api_url}/metrics", timeout=5).text
