"""The heartbeat of this process's running jobs: their leases stay alive while they run.

A job's lease (``core.records``, ``LEASE_MS``) says that a live copy is calling the
upstream for it; a redelivered copy that finds the lease held does not call the upstream
again, and retries once the lease could have lapsed. This thread renews the leases of
every job the process is running, a third of the lease's length apart, so a lease lapses
only when its holder died (or stalled longer than the lease).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator

from core.errors import StorageUnavailable
from core.records import LEASE_MS

__all__ = ["RENEW_EVERY_S", "Heartbeat"]

log = logging.getLogger(__name__)

RENEW_EVERY_S = LEASE_MS / 1000 / 3


class Heartbeat:
    """Renews the leases of the jobs held through :meth:`holding` (a daemon thread)."""

    def __init__(self, renew: Callable[[Iterable[str]], None]) -> None:
        self._renew = renew
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def holding(self, job_id: str) -> Iterator[None]:
        """Keep ``job_id``'s lease alive for the length of the block."""
        with self._lock:
            self._held[job_id] = self._held.get(job_id, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="genq-leases", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held[job_id] -= 1
                if not self._held[job_id]:
                    del self._held[job_id]

    def _run(self) -> None:
        stop = threading.Event()  # never set: the thread lives as long as the process
        while not stop.wait(RENEW_EVERY_S):
            with self._lock:
                held = list(self._held)
            if not held:
                continue
            try:
                self._renew(held)
            except StorageUnavailable as exc:
                log.warning("leases.renew_failed", extra={"jobs": len(held), "error": exc.message})
