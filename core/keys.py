"""Every Redis key genq writes, built here from one prefix.

Celery's own keys (``celery``, ``_kombu.*``, ``celery-task-meta-*``) are kombu's and
are not listed; everything genq owns lives under ``genq:``.
"""

from __future__ import annotations

__all__ = ["PREFIX", "breaker", "cache", "circuit", "circuits", "job", "job_attempts"]

PREFIX = "genq:"


def job(job_id: str) -> str:
    """Hash holding one job record (status, timestamps, result or error, owner)."""
    return f"{PREFIX}job:{job_id}"


def job_attempts(job_id: str) -> str:
    """List of one job's upstream attempts, oldest first."""
    return f"{PREFIX}job:{job_id}:attempts"


def breaker(circuit: str, part: str) -> str:
    """One field group of a circuit's shared state; ``{}`` keeps a circuit in one slot."""
    return f"{PREFIX}breaker:{{{circuit}}}:{part}"


def cache(digest: str) -> str:
    """A cached generation, addressed by the digest of its canonical request."""
    return f"{PREFIX}cache:{digest}"


def circuits() -> str:
    """Set of every circuit name that has ever been used (for ``GET /v1/circuits``)."""
    return f"{PREFIX}breaker:circuits"


def circuit(name: str) -> list[str]:
    """The five keys of circuit ``name``, in the order every circuit script takes them:
    state hash, probe lease, transition counters, the circuits set, rate buckets."""
    parts = ("state", "probe", "events")
    return [*(breaker(name, part) for part in parts), circuits(), breaker(name, "rate")]
