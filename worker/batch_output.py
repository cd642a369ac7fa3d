"""A batch item's result as a line of its batch's output or error file, in OpenAI's shapes.

Output line::

    {"id": "batch_req_…", "custom_id": "…", "error": null,
     "response": {"status_code": 200, "request_id": "…", "body": {…}}}

``body`` is a completion (``/v1/completions``: ``object: "text_completion"``,
``choices[].text``) or a chat completion (``/v1/chat/completions``:
``choices[].message``), with ``usage`` when the upstream reported it, plus a ``genq``
object: ``{source, degraded, fallback_reason, circuit, retry_after, citations}``. An item
that ends failed goes to the error file as ``{"id", "custom_id", "response": null,
"error": {"code", "message"}}``. :class:`BatchItemRecords` writes these lines where a
job would write its record, so the generation service runs batch items and jobs alike.
"""

from __future__ import annotations

import json
import time
from typing import Any

from core.batches import BatchStore
from core.contract import Attempt, BatchItem, JobError, JobResult
from core.records import ExtraSet, Start

__all__ = ["BatchItemRecords", "error_line", "output_line"]


def _usage(result: JobResult) -> dict[str, int] | None:
    if not result.usage:
        return None
    usage = dict(result.usage)
    if "prompt_tokens" in usage and "completion_tokens" in usage:
        usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
    return usage


def _body(item: BatchItem, request_id: str, result: JobResult) -> dict[str, Any]:
    created = int(time.time())
    if item.endpoint == "/v1/completions":
        choice: dict[str, Any] = {
            "index": 0,
            "text": result.text,
            "logprobs": None,
            "finish_reason": None,
        }
        body: dict[str, Any] = {"id": f"cmpl-{request_id}", "object": "text_completion"}
    else:
        message = {"role": "assistant", "content": result.text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": None}
        body = {"id": f"chatcmpl-{request_id}", "object": "chat.completion"}
    body |= {"created": created, "model": result.model, "choices": [choice]}
    usage = _usage(result)
    if usage is not None:
        body["usage"] = usage
    body["genq"] = {
        "source": result.source,
        "degraded": result.degraded,
        "fallback_reason": result.fallback_reason,
        "circuit": result.circuit,
        "retry_after": result.retry_after,
        "citations": [c.model_dump() for c in result.citations],
    }
    return body


def output_line(item: BatchItem, request_id: str, result: JobResult) -> str:
    """The output file's line for an item that succeeded (degraded or not)."""
    response = {
        "status_code": 200,
        "request_id": request_id,
        "body": _body(item, request_id, result),
    }
    line = {"id": request_id, "custom_id": item.custom_id, "response": response, "error": None}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def error_line(item: BatchItem, request_id: str, error: JobError) -> str:
    """The error file's line for an item that failed."""
    line = {
        "id": request_id,
        "custom_id": item.custom_id,
        "response": None,
        "error": {"code": error.type.value, "message": error.message},
    }
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


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
                source=result.source,
                also_set=also_set,
            )
        assert error is not None, "an item ends with a result or an error"
        line = error_line(item, job_id, error)
        return self._store.item_finish(item.batch_id, item.index, job_id, line, error=True)
