"""worker.limiter's pure parts: what a call's outcome tells the limit, and the options
settings give it."""

from __future__ import annotations

import pytest

from core.capacity import SLOT_LEASE_MS, CallOutcome, LimitOptions
from core.errors import UpstreamRateLimited, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from core.settings import Settings
from worker.leases import RENEW_EVERY_S
from worker.limiter import limit_options, outcome_of


@pytest.mark.parametrize(
    ("exc", "elapsed", "target", "expected"),
    [
        (None, 0.5, None, CallOutcome.OK),
        (None, 0.5, 1.0, CallOutcome.OK),
        (None, 1.5, 1.0, CallOutcome.CONGESTED),  # slower than the latency target
        (UpstreamRateLimited("429", status=429), 0.01, None, CallOutcome.THROTTLED),
        (UpstreamTimeout("slow"), 30.0, None, CallOutcome.CONGESTED),
        (UpstreamUnavailable("503", status=503), 0.1, None, CallOutcome.NEUTRAL),  # breaker's
        (UpstreamRejected("400", status=400), 0.1, None, CallOutcome.NEUTRAL),  # the job's
        (KeyboardInterrupt(), 0.1, None, CallOutcome.NEUTRAL),
    ],
)
def test_outcome_of(
    exc: BaseException | None, elapsed: float, target: float | None, expected: CallOutcome
) -> None:
    assert outcome_of(exc, elapsed, target) is expected


def test_a_slots_lease_is_short_and_renewed_whatever_the_call() -> None:
    """A slot's lease is SLOT_LEASE_MS however long a call may take: its holder renews
    it, so a dead worker's slot comes back in seconds."""
    settings = Settings(upstream_timeout_s=30, upstream_connect_timeout_s=2)
    options = limit_options(settings)
    assert options.lease_ms == SLOT_LEASE_MS == 10_000
    assert RENEW_EVERY_S * 3 <= SLOT_LEASE_MS / 1000
    assert (options.mode, options.initial, options.floor, options.ceiling) == (
        "adaptive",
        32,
        1,
        512,
    )


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"floor": 0}, "floor"),
        ({"floor": 10, "ceiling": 5}, "floor <= ceiling"),
        ({"decrease": 1.0}, "decrease"),
        ({"decrease": 0.0}, "decrease"),
        ({"lease_ms": 0}, "lease_ms"),
    ],
)
def test_limit_options_refuse_what_cannot_work(bad: dict[str, float], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        LimitOptions(**bad)  # type: ignore[arg-type]


def test_the_packed_options_clamp_the_start_between_floor_and_ceiling() -> None:
    assert LimitOptions(initial=1000, ceiling=50).packed.split(":")[:4] == [
        "adaptive",
        "50",
        "1",
        "50",
    ]


def test_settings_refuse_a_floor_above_the_ceiling() -> None:
    with pytest.raises(ValueError, match="MAX_IN_FLIGHT"):
        Settings(upstream_min_in_flight=10, upstream_initial_in_flight=10, upstream_max_in_flight=5)
