"""Which circuits a batch run shows, and what happened to them while it ran.

The progress bar shows one circuit state: the worst among the circuits this run has
reason to care about (those named in its output lines' ``genq.circuit``, and those that
changed while it ran), or among every circuit while there are none yet. A change of
state between two polls is an event line; the transition counters (opened, half_open,
closed, ...) tell the final summary what happened even between two polls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cli.models import Circuit

__all__ = ["STATE_RANK", "CircuitWatch", "worst"]

#: How bad a state is for the requests that meet it (higher: worse).
STATE_RANK = {"closed": 0, "forced_closed": 1, "half-open": 2, "open": 3, "forced_open": 4}
#: Transition counters in the order a summary lists them.
TRANSITIONS = ("opened", "half_open", "closed", "forced_open", "forced_closed", "reset")


def worst(circuits: Iterable[Circuit]) -> Circuit | None:
    """The circuit in the worst state (the first of equals), or None."""
    return max(circuits, key=lambda c: STATE_RANK.get(c.state, 0), default=None)


def state_text(circuit: Circuit | None) -> str:
    """``closed``, ``open · probe in 2.1 s``, ``half-open · probe in flight``…"""
    if circuit is None:
        return "closed (none used yet)"
    if circuit.state == "open":
        wait = f"probe in {circuit.retry_after:.1f} s" if circuit.retry_after else "probe due"
        return f"open · {wait}"
    if circuit.state == "half-open" and circuit.probe_in_flight:
        return "half-open · probe in flight"
    return circuit.state


@dataclass
class CircuitWatch:
    """Circuits seen over one run: first sight, latest sight, and the run's focus."""

    first: dict[str, Circuit] = field(default_factory=dict)
    latest: dict[str, Circuit] = field(default_factory=dict)
    focus: set[str] = field(default_factory=set)
    polls: int = 0

    def observe(self, circuits: Iterable[Circuit]) -> list[str]:
        """Record a poll of ``/v1/circuits``; the state changes since the last one."""
        events = []
        started = self.polls > 0
        for circuit in circuits:
            before = self.latest.get(circuit.name)
            if circuit.name not in self.first:
                # A circuit first seen mid-run made all its transitions during the run.
                baseline = Circuit(name=circuit.name, state="closed")
                self.first[circuit.name] = baseline if started else circuit
            if started and (before is None or _changed(before, circuit)):
                self.focus.add(circuit.name)
            if before is not None and before.state != circuit.state:
                events.append(_event(before, circuit))
            elif before is None and started and circuit.state != "closed":
                events.append(f"circuit {circuit.name}: {state_text(circuit)}")
            self.latest[circuit.name] = circuit
        self.polls += 1
        return events

    def named(self, names: Iterable[str]) -> None:
        """Circuits named by the run's output lines (``genq.circuit``)."""
        self.focus.update(n for n in names if n)

    def shown(self) -> Circuit | None:
        """The circuit the progress bar shows."""
        pool = [self.latest[n] for n in self.focus if n in self.latest]
        return worst(pool or self.latest.values())

    def transitions(self) -> dict[str, dict[str, int]]:
        """Per circuit in focus, the transitions counted during the run (non-zero only)."""
        found: dict[str, dict[str, int]] = {}
        for name in sorted(self.focus):
            last = self.latest.get(name)
            if last is None:
                continue
            start = self.first.get(name)
            before = start.transitions if start else {}
            delta = {k: last.transitions.get(k, 0) - before.get(k, 0) for k in TRANSITIONS}
            found[name] = {k: n for k, n in delta.items() if n > 0}
        return found


def _changed(before: Circuit, now: Circuit) -> bool:
    return (
        before.state != now.state
        or before.transitions != now.transitions
        or before.failure_count != now.failure_count
    )


def _event(before: Circuit, now: Circuit) -> str:
    why = ""
    if now.state == "open" and now.last_failure:
        why = f" ({now.last_failure.partition(':')[0]})"  # the error's type
    return f"circuit {now.name}: {before.state} → {state_text(now)}{why}"
