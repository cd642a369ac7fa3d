"""The breaker's wire codes: what its Lua scripts answer, as enums injected into them.

``LUA_HEADER`` holds every code as a Lua local (``local VERDICT_ADMIT = 0``…), put in
front of the scripts by ``core.scripts.load``; Python reads replies with the same enums.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple

from pybreaker import (
    CircuitBreakerState,
    CircuitClosedState,
    CircuitHalfOpenState,
    CircuitOpenState,
)

from core import scripts
from core.circuits import LUA_CONSTANTS, Event

__all__ = ["LUA_HEADER", "TRANSITIONS", "OutcomeKind", "Transition", "TransitionInfo", "Verdict"]


class Verdict(IntEnum):
    """What an admission decided; ``RECORDED`` answers a recorded outcome."""

    ADMIT = 0
    PROBE = 1
    REJECT_OPEN = 2
    REJECT_FORCED = 3
    REJECT_PROBE = 4
    RECORDED = -1


class Transition(IntEnum):
    """The transition a script made, if any."""

    NONE = 0
    FAIL_MAX = 1
    RATE = 2
    PROBE_FAILED = 3
    HALF_OPEN = 4
    CLOSED = 5


class OutcomeKind(StrEnum):
    """What a finished call counts as."""

    OK = "ok"
    FAIL = "fail"
    NEUTRAL = "neutral"


class TransitionInfo(NamedTuple):
    """How a transition is reported: log event, reason, pybreaker states before and after."""

    event: Event
    reason: str
    old: Callable[[Any, None], CircuitBreakerState]  # a pybreaker state class, given the breaker
    new: Callable[[Any, None], CircuitBreakerState]


TRANSITIONS = {
    Transition.FAIL_MAX: TransitionInfo(
        Event.OPENED, "fail_max", CircuitClosedState, CircuitOpenState
    ),
    Transition.RATE: TransitionInfo(
        Event.OPENED, "failure_rate", CircuitClosedState, CircuitOpenState
    ),
    Transition.PROBE_FAILED: TransitionInfo(
        Event.OPENED, "probe_failed", CircuitHalfOpenState, CircuitOpenState
    ),
    Transition.HALF_OPEN: TransitionInfo(
        Event.HALF_OPEN, "reset_timeout", CircuitOpenState, CircuitHalfOpenState
    ),
    Transition.CLOSED: TransitionInfo(
        Event.CLOSED, "probe_succeeded", CircuitHalfOpenState, CircuitClosedState
    ),
}

LUA_HEADER = (
    LUA_CONSTANTS
    + scripts.constants(Verdict, prefix="VERDICT_")
    + scripts.constants(Transition, prefix="TRANSITION_")
    + scripts.constants(OutcomeKind, prefix="OUTCOME_")
)
