"""Where a batch item's run is recorded: :class:`BatchItemRecords` writes its output or
error line (``core.openai_batch``) where a job would write its record, so the generation
service runs batch items and jobs alike.
"""

from __future__ import annotations

from core.batches import BatchStore
from core.contract import QUEUE_BATCH, Attempt, BatchItem, JobError, JobResult
from core.openai_batch import error_line, output_line
from core.records import ExtraSet, Start
from core.stats import tally

__all__ = ["BatchItemRecords"]


class BatchItemRecords:
    """Where one batch item's run is recorded: the job store's calls, kept by its batch."""

    def __init__(self, store: BatchStore, item: BatchItem) -> None:
        self._store = store
        self._item = item

    def mark_running(self, job_id: str) -> Start:
        """Whether the item may run: not done, not cancelled, its batch not stopped, and no
        other copy running it."""
        return self._store.item_start(self._item.batch_id, self._item.index, job_id)

    def mark_queued(self, job_id: str, attempt: Attempt | None = None) -> None:
        """A retry waits: its lease is given back (the item stays running until its last
        line)."""
        self._store.item_release(job_id)

    def finish(
        self,
        job_id: str,
        *,
        result: JobResult | None = None,
        error: JobError | None = None,
        attempt: Attempt | None = None,
        also_set: ExtraSet | None = None,
        started_at: str = "",
    ) -> bool:
        """Append the item's line (output or error), its cache entry riding along."""
        item = self._item
        if result is not None:
            line = output_line(item, job_id, result)
            return self._store.item_finish(
                item.batch_id,
                item.index,
                job_id,
                line,
                error=False,
                counted=tally(QUEUE_BATCH, job_id, result, batch_id=item.batch_id),
                source="failover" if result.failover else result.source,
                also_set=also_set,
            )
        assert error is not None, "an item ends with a result or an error"
        line = error_line(item, job_id, error)
        counted = tally(QUEUE_BATCH, job_id, error=error, batch_id=item.batch_id)
        return self._store.item_finish(
            item.batch_id, item.index, job_id, line, error=True, counted=counted
        )
