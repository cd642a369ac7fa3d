"""One circuit breaker per upstream target, shared by every genq process through Redis.

    breaker = SharedCircuitBreaker("hf~api.example~gpt2", get_redis, fail_max=5, reset_timeout=30)
    text = breaker.call(upstream.generate, request)   # or ``with breaker.calling():``

    permit = breaker.admit()          # two phases: work that must not count goes between
    with breaker.guard(permit):
        text = upstream.generate(request)

Layout: ``circuit.py`` (the breaker), ``store.py`` (the interface over a circuit's
state), ``redis_store.py`` (Lua in ``lua/``), ``local_store.py`` (in-process, when Redis
is down), ``rules.py`` (options, outcomes, replies), ``codes.py`` (wire codes).
Operators' controls and snapshots live in ``core.circuits``. docs/breaker.md tells how
it differs from pybreaker.
"""

from worker.breaker.circuit import (
    DEFAULT_OPEN_VIEW_TTL_S,
    DEFAULT_VIEW_TTL_S,
    REDIS_RETRY_S,
    Permit,
    SharedCircuitBreaker,
)
from worker.breaker.rules import Options, SlowCall

__all__ = [
    "DEFAULT_OPEN_VIEW_TTL_S",
    "DEFAULT_VIEW_TTL_S",
    "REDIS_RETRY_S",
    "Options",
    "Permit",
    "SharedCircuitBreaker",
    "SlowCall",
]
