"""worker.backoff: full-jitter exponential backoff that honours Retry-After, and its policy."""

from __future__ import annotations

import math
import random
from statistics import mean

import pytest

from worker.backoff import RetryPolicy, circuit_wait, compute_backoff

SAMPLES = 2000


def draws(attempt: int, seed: int = 7, **options: float) -> list[float]:
    rng = random.Random(seed)
    return [compute_backoff(attempt, rng=rng, **options) for _ in range(SAMPLES)]


def test_delays_stay_within_zero_and_the_exponential_ceiling() -> None:
    """For attempts 0..40 every delay lies in [0, min(cap, base * 2**attempt)]."""
    rng = random.Random(1)
    for attempt in range(41):
        ceiling = min(60.0, 0.5 * 2**attempt)
        for _ in range(200):
            delay = compute_backoff(attempt, base_s=0.5, cap_s=60.0, rng=rng)
            assert 0.0 <= delay <= ceiling


def test_full_jitter_spans_the_whole_window() -> None:
    """Delays reach both ends of [0, ceiling]: full jitter, not "equal jitter"."""
    delays = draws(3)  # ceiling 8 s
    assert min(delays) < 0.1 * 8.0
    assert max(delays) > 0.9 * 8.0


def test_cap_is_respected_for_huge_attempts() -> None:
    """Huge attempt numbers neither overflow nor exceed cap_s."""
    rng = random.Random(2)
    for attempt in (30, 64, 1023, 1024, 10**6):
        assert 0.0 <= compute_backoff(attempt, cap_s=5.0, rng=rng) <= 5.0


def test_upper_bound_doubles_and_mean_grows_exponentially() -> None:
    """Below the cap each attempt's mean delay and largest delay about double the previous one."""
    for attempt in range(6):  # ceilings 1..32 s, all under the 60 s cap
        before, after = draws(attempt), draws(attempt + 1)
        assert 1.8 < mean(after) / mean(before) < 2.2
        assert 1.8 < max(after) / max(before) < 2.2
        assert mean(after) == pytest.approx(2**attempt, rel=0.1)  # ceiling / 2


def test_retry_after_is_a_floor() -> None:
    """With retry_after 10 s no delay is shorter than 10 s, even when the jitter is smaller."""
    delays = draws(0, retry_after=10.0)  # jitter alone is at most 1 s
    assert all(delay == 10.0 for delay in delays)


def test_larger_jitter_wins_over_a_small_retry_after() -> None:
    """A retry_after below the jittered delay does not shorten it."""
    delays = draws(5, retry_after=1.0)  # ceiling 32 s
    assert min(delays) >= 1.0
    assert max(delays) > 20.0


def test_retry_after_is_capped() -> None:
    """A retry_after above cap_s gives exactly cap_s."""
    assert draws(0, retry_after=3600.0, cap_s=60.0) == [60.0] * SAMPLES


@pytest.mark.parametrize("retry_after", [-5.0, math.nan, -math.inf])
def test_bad_retry_after_never_makes_a_negative_delay(retry_after: float) -> None:
    """A negative, NaN or -inf retry_after is ignored: the delay stays in [0, ceiling]."""
    assert all(0.0 <= d <= 2.0 for d in draws(1, retry_after=retry_after))


def test_seeded_rng_is_reproducible() -> None:
    """The same seed gives the same delays."""
    assert draws(4, seed=42) == draws(4, seed=42)
    assert draws(4, seed=42) != draws(4, seed=43)


def test_zero_base_means_no_wait() -> None:
    """base_s 0 (a testing setting) always gives 0 s unless the upstream asked to wait."""
    assert set(draws(5, base_s=0.0)) == {0.0}
    assert set(draws(5, base_s=0.0, retry_after=2.0)) == {2.0}


@pytest.mark.parametrize(
    ("attempt", "base_s", "cap_s"),
    [
        (-1, 1.0, 60.0),
        (0, -1.0, 60.0),
        (0, math.nan, 60.0),
        (0, 0.0, -1.0),
        (0, 10.0, 5.0),
        (0, 1.0, math.inf),
    ],
)
def test_compute_backoff_rejects_bad_options(attempt: int, base_s: float, cap_s: float) -> None:
    """Negative, non-finite or inverted options raise ValueError."""
    with pytest.raises(ValueError, match=r">= 0|>= base_s"):
        compute_backoff(attempt, base_s=base_s, cap_s=cap_s)


@pytest.mark.parametrize(
    "options",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"base_s": -0.5},
        {"cap_s": -1.0},
        {"base_s": 30.0, "cap_s": 10.0},
        {"base_s": math.inf},
    ],
)
def test_policy_rejects_bad_options_at_construction(options: dict[str, float]) -> None:
    """RetryPolicy raises ValueError when built with negative or inverted options."""
    with pytest.raises(ValueError, match=r">= 0|>= base_s"):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_policy_delay_uses_its_window() -> None:
    """RetryPolicy.delay applies its own base_s and cap_s and honours retry_after."""
    policy = RetryPolicy(max_retries=3, base_s=2.0, cap_s=5.0)
    rng = random.Random(3)
    assert all(0.0 <= policy.delay(0, rng=rng) <= 2.0 for _ in range(500))
    assert all(0.0 <= policy.delay(10, rng=rng) <= 5.0 for _ in range(500))
    assert policy.delay(0, retry_after=4.0, rng=rng) >= 4.0
    assert policy.delay(0, retry_after=100.0, rng=rng) == 5.0


def test_policy_allows_exactly_max_retries() -> None:
    """allows() is true for retries 0..max_retries-1 and false from max_retries on."""
    policy = RetryPolicy(max_retries=2)
    assert [policy.allows(n) for n in range(4)] == [True, True, False, False]
    assert not RetryPolicy(max_retries=0).allows(0)


def test_circuit_wait_is_the_circuits_retry_after_plus_a_spread() -> None:
    """A batch item waits the circuit's retry_after, up to 20% more, never under the floor."""
    rng = random.Random(3)
    waits = [circuit_wait(10.0, rng=rng) for _ in range(SAMPLES)]
    assert all(10.0 <= w <= 12.0 for w in waits)
    assert max(waits) - min(waits) > 1.5  # spread, so waiting items do not return at once
    assert all(0.5 <= circuit_wait(r, rng=rng) <= 0.6 for r in (0.0, 0.1, None, math.nan))
