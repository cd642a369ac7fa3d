"""OpenAI's Batch API shapes, in one place: the batch object and the lines of a batch's
output and error files, built from genq's records.

Batch object: OpenAI's ``Batch`` (``TIME_FIELDS`` are its moments), with genq's figures in
``genq``: ``{counts_by_source, cancelled, backlog}``.

Output line::

    {"id": "batch_req_…", "custom_id": "…", "error": null,
     "response": {"status_code": 200, "request_id": "…", "body": {…}}}

``body`` is a completion (``/v1/completions``: ``object: "text_completion"``,
``choices[].text``) or a chat completion (``/v1/chat/completions``:
``choices[].message``), with ``usage`` when the upstream reported it, plus a ``genq``
object: ``{source, degraded, fallback_reason, circuit, retry_after, citations, target,
failover}``. An item that ends failed goes to the error file as ``{"id", "custom_id",
"response": null, "error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from core.batches import BatchRecord
from core.contract import BatchEndpoint, BatchItem, JobError, JobResult

__all__ = [
    "TIME_FIELDS",
    "batch_object",
    "completion_body",
    "custom_id_of",
    "error_line",
    "output_line",
    "request_lines",
]

TIME_FIELDS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
"""The moments OpenAI's batch object shows (``BatchTimes`` adds genq's ``active_at``)."""


def batch_object(record: BatchRecord) -> dict[str, Any]:
    """The batch as OpenAI's ``Batch`` object, with genq's figures in ``genq``."""
    times, counts = record.times, record.counts
    errors = None
    if record.errors:
        errors = {"object": "list", "data": [e.model_dump() for e in record.errors]}
    return {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "errors": errors,
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": record.status,
        "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id,
        **{name: getattr(times, name) for name in TIME_FIELDS},
        "request_counts": {
            "total": counts.total,
            "completed": counts.completed,
            "failed": counts.failed,
        },
        "metadata": record.metadata,
        "genq": {
            "counts_by_source": record.sources.model_dump(),
            "cancelled": counts.cancelled,
            # Items still waiting with the scheduler, not yet on the queue.
            "backlog": record.backlog,
        },
    }


def _usage(result: JobResult) -> dict[str, int] | None:
    if not result.usage:
        return None
    usage = dict(result.usage)
    if "prompt_tokens" in usage and "completion_tokens" in usage:
        usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
    return usage


def completion_body(
    endpoint: BatchEndpoint, request_id: str, result: JobResult, job_id: str | None = None
) -> dict[str, Any]:
    """OpenAI's completion (``/v1/completions``) or chat completion of ``result``, with
    genq's ``genq`` object (and the ``job_id`` behind a single request's answer)."""
    created = int(time.time())
    if endpoint == "/v1/completions":
        choice: dict[str, Any] = {
            "index": 0,
            "text": result.text,
            "logprobs": None,
            "finish_reason": result.finish_reason,
        }
        body: dict[str, Any] = {"id": f"cmpl-{request_id}", "object": "text_completion"}
    else:
        message = {"role": "assistant", "content": result.text}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": result.finish_reason,
        }
        body = {"id": f"chatcmpl-{request_id}", "object": "chat.completion"}
    body |= {"created": created, "model": result.model, "choices": [choice]}
    usage = _usage(result)
    if usage is not None:
        body["usage"] = usage
    body["genq"] = {
        **({"job_id": job_id} if job_id is not None else {}),
        "source": result.source,
        "degraded": result.degraded,
        "fallback_reason": result.fallback_reason,
        "circuit": result.circuit,
        "retry_after": result.retry_after,
        "citations": [c.model_dump() for c in result.citations],
        "target": result.target,
        "failover": result.failover,
    }
    return body


def output_line(item: BatchItem, request_id: str, result: JobResult) -> str:
    """The output file's line for an item that succeeded (degraded or not)."""
    response = {
        "status_code": 200,
        "request_id": request_id,
        "body": completion_body(item.endpoint, request_id, result),
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


def request_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """An input file's request lines with their numbers (from 1), blank lines skipped: a
    started batch's item ``i`` is the ``i``-th of them (the API's parser and the
    reconciler both count them so)."""
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            yield number, raw


def custom_id_of(raw: bytes) -> str | None:
    """A request line's ``custom_id``, or None if it has none (or is not JSON)."""
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    custom_id = line.get("custom_id") if isinstance(line, dict) else None
    return custom_id if isinstance(custom_id, str) and custom_id else None
