"""Heartbeats: the leases this process holds stay alive while it holds them.

A job's running lease (``core.records``, ``LEASE_MS``) says that a live copy is calling
the upstream for it; a redelivered copy that finds the lease held does not call the
upstream again, and retries once the lease could have lapsed. A call slot's lease
(``core.capacity``, ``SLOT_LEASE_MS``) holds one place under the cluster's call limit.
A heartbeat thread renews the leases the process holds, a third of the lease's length
apart, so a lease lapses only when its holder died (or stalled longer than the lease):
a killed worker's slots come back within ``SLOT_LEASE_MS``, not at the end of its call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Generic, TypeVar

from core.errors import StorageUnavailable
from core.records import LEASE_MS

__all__ = ["RENEW_EVERY_S", "Heartbeat"]

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)

RENEW_EVERY_S = LEASE_MS / 1000 / 3


class Heartbeat(Generic[K]):
    """Renews the leases held through :meth:`holding` (a daemon thread): ``renew`` is
    given every lease held, each tick; its leases are ``K`` (a job id, a call slot)."""

    def __init__(self, renew: Callable[[Iterable[K]], None], name: str = "genq-leases") -> None:
        self._renew = renew
        self._name = name
        self._held: dict[K, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def holding(self, lease: K) -> Iterator[None]:
        """Keep ``lease`` alive for the length of the block."""
        with self._lock:
            self._held[lease] = self._held.get(lease, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held[lease] -= 1
                if not self._held[lease]:
                    del self._held[lease]

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
                extra = {"leases": len(held), "kind": self._name, "error": exc.message}
                log.warning("leases.renew_failed", extra=extra)
