"""Every Redis key genq writes, built here from one prefix.

Celery's own keys (``celery``, ``_kombu.*``, ``celery-task-meta-*``) are kombu's and
are not listed; everything genq owns lives under ``genq:``.
"""

from __future__ import annotations

__all__ = [
    "PREFIX",
    "batch",
    "batch_errors",
    "batch_items",
    "batch_messages",
    "batch_output",
    "batches",
    "breaker",
    "cache",
    "circuit",
    "circuits",
    "file",
    "file_content",
    "idempotency",
    "job",
    "job_lease",
    "jobs_done",
    "open_jobs",
    "owner_batches",
    "owner_jobs",
    "sched",
    "sched_owner",
    "sched_owners",
    "stats",
    "validating_batches",
]

PREFIX = "genq:"


def job(job_id: str) -> str:
    """Hash holding one job record (status, timestamps, result or error, owner)."""
    return f"{PREFIX}job:{job_id}"


def job_stream(job_id: str) -> str:
    """Stream of a streamed job's pieces of answer, relayed by the worker to the API."""
    return f"{PREFIX}job:{job_id}:stream"


def jobs_done() -> str:
    """Pub/sub channel: each job's id, published by the write that makes it final (the
    API's long-polls wait on it)."""
    return f"{PREFIX}jobs:done"


def open_jobs() -> str:
    """Sorted set of jobs not final yet, scored by their record's last write (ms): what
    the reconciler looks through for jobs that no message will finish."""
    return f"{PREFIX}jobs:open"


def job_lease(job_id: str) -> str:
    """The running lease of one job: the token of the copy calling the upstream for it."""
    return f"{PREFIX}job:{job_id}:lease"


def breaker(circuit: str, part: str) -> str:
    """One field group of a circuit's shared state; ``{}`` keeps a circuit in one slot."""
    return f"{PREFIX}breaker:{{{circuit}}}:{part}"


def call_limit(target: str) -> list[str]:
    """An upstream target's cluster-wide call limit (``core.capacity``): its state (hash),
    the leases of the calls in flight (sorted set: token -> expiry ms), the list a freed
    slot is announced on (batch items block on it), the interactive jobs waiting for a
    slot (sorted set: token -> end of the wait, ms), the list that wakes them first, and
    the batch items waiting (sorted set, as the interactive jobs')."""
    tag = f"{PREFIX}limit:{{{target}}}"
    return [
        tag,
        f"{tag}:leases",
        f"{tag}:freed",
        f"{tag}:waiters",
        f"{tag}:freed:first",
        f"{tag}:waiting",
    ]


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


def file(file_id: str) -> str:
    """Hash describing one file (owner, name, purpose, size; a batch's output names it)."""
    return f"{PREFIX}file:{file_id}"


def files(owner: str) -> str:
    """Sorted set of one owner's file ids, scored by creation time (ms)."""
    return f"{PREFIX}files:{owner}"


def file_content(file_id: str) -> str:
    """The bytes of an uploaded file."""
    return f"{PREFIX}file:{file_id}:content"


def batch(batch_id: str) -> str:
    """Hash holding one batch: owner, status, timestamps, counts, errors."""
    return f"{PREFIX}batch:{{{batch_id}}}"


def batch_items(batch_id: str) -> str:
    """Hash of a batch's items that started or ended: index -> state."""
    return f"{PREFIX}batch:{{{batch_id}}}:items"


def batch_messages(batch_id: str) -> str:
    """Hash of the Celery messages of a batch's items not yet final: index -> message,
    for the reconciler to send a lost one again."""
    return f"{PREFIX}batch:{{{batch_id}}}:messages"


def batch_output(batch_id: str) -> str:
    """List of a batch's output lines (JSON), in the order they finished."""
    return f"{PREFIX}batch:{{{batch_id}}}:output"


def batch_errors(batch_id: str) -> str:
    """List of a batch's error lines (JSON), in the order they finished."""
    return f"{PREFIX}batch:{{{batch_id}}}:errors"


def validating_batches() -> str:
    """Sorted set of batches created and not yet started or failed, by creation (s): a
    batch left there too long lost its API process (the reconciler fails it)."""
    return f"{PREFIX}batches:validating"


def open_batches() -> str:
    """Sorted set of batches that were started, scored by their start (ms): what the
    reconciler looks through for items that no message will finish."""
    return f"{PREFIX}batches:open"


def sched() -> str:
    """Hash of the batch scheduler's state: ``vtime``, the pass it served last."""
    return f"{PREFIX}sched"


def sched_owners() -> str:
    """Sorted set of the owners with batch items waiting to be released, by pass (the
    scheduler serves the lowest; ``lua/sched_prelude.lua``)."""
    return f"{PREFIX}sched:owners"


def sched_owner(owner: str) -> str:
    """Sorted set of one owner's batches with items waiting to be released, by pass."""
    return f"{PREFIX}sched:owner:{owner}"


def owner_jobs(owner: str) -> str:
    """Sorted set of one owner's jobs not final (job id -> created ms): part of its open
    work (``core.quotas``, ``lua/owner_prelude.lua``)."""
    return f"{PREFIX}owner:{owner}:jobs"


def owner_batches(owner: str) -> str:
    """Sorted set of one owner's batches in progress: the rest of its open work."""
    return f"{PREFIX}owner:{owner}:batches"


def batches(owner: str) -> str:
    """Sorted set of one owner's batch ids, scored by creation time (ms)."""
    return f"{PREFIX}batches:{owner}"


def idempotency(owner: str, scope: str, key: str) -> str:
    """What one owner's ``Idempotency-Key`` on one route created (expires in a day)."""
    return f"{PREFIX}idem:{owner}:{scope}:{key}"


def stats(part: str) -> str:
    """One of the cluster's counters (``core.stats``): ``finished``, ``calls``, ``cache``
    (hashes of counts) or ``recent`` (the last outcomes, a list)."""
    return f"{PREFIX}stats:{part}"
