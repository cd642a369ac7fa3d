"""The health route's word on the circuits: down, recovering or ok (api.routes.circuits)."""

from __future__ import annotations

from typing import Any

import pytest

from api.routes.circuits import Circuit, health


def circuit(state: str, retry_after: float = 0.0, **fields: Any) -> Circuit:
    return Circuit.model_validate(
        {
            "name": f"hf~sim~{state}",
            "state": state,
            "failure_count": 0,
            "opened_at": None if state == "closed" else "2026-12-04T05:00:00.000Z",
            "retry_after": retry_after,
            "probe_due": False,
            "last_failure": None,
            "probe_in_flight": False,
            "transitions": {},
            **fields,
        }
    )


@pytest.mark.parametrize(
    ("circuits", "expected"),
    [
        ([], ("ok", None)),
        ([circuit("closed"), circuit("forced_closed")], ("ok", None)),
        ([circuit("open", 0.0, probe_due=True)], ("recovering", None)),
        ([circuit("half-open", 4.2, probe_in_flight=True)], ("recovering", None)),
        ([circuit("open", 2.5)], ("degraded", 3)),
        ([circuit("forced_open", 30.0)], ("degraded", 30)),
        ([circuit("open", 0.2), circuit("open", 0.0, probe_due=True)], ("degraded", 1)),
        ([circuit("open", 9.0), circuit("forced_open", 30.0)], ("degraded", 9)),
    ],
)
def test_health_is_down_only_while_a_circuit_refuses_for_a_while_yet(
    circuits: list[Circuit], expected: tuple[str, int | None]
) -> None:
    """Open with time left or forced open: degraded (503, Retry-After the soonest end);
    open with its probe due, or half-open: recovering (200); otherwise ok."""
    assert health(circuits) == expected
