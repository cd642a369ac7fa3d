"""worker.leases: the heartbeat renews exactly the leases of jobs being run."""

from __future__ import annotations

import time
from collections.abc import Iterable

from worker.leases import RENEW_EVERY_S, Heartbeat


def test_the_heartbeat_renews_held_leases_and_only_those() -> None:
    """While a job is held its lease is renewed every RENEW_EVERY_S; once released, not."""
    renewed: list[list[str]] = []

    def renew(job_ids: Iterable[str]) -> None:
        renewed.append(sorted(job_ids))

    heartbeat = Heartbeat(renew)
    with heartbeat.holding("a"), heartbeat.holding("b"):
        time.sleep(RENEW_EVERY_S + 0.3)
    assert renewed == [["a", "b"]]
    time.sleep(RENEW_EVERY_S)
    assert renewed == [["a", "b"]]  # nothing held: nothing renewed
