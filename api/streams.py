"""A streamed job's answer as OpenAI's server-sent events.

The worker relays the upstream's pieces into ``genq:job:{id}:stream`` as they arrive
(``worker.streaming``); this reads them with blocking ``XREAD``s (no Redis round trip while
nothing comes) and writes each as a chunk at once. The relay's ``end`` entry says the job
is final: its record gives the rest. An answer that came whole (the cache, an excerpt,
an ``hf`` upstream) is one chunk; then a last chunk with ``finish_reason`` and genq's
``genq`` object, a ``usage`` chunk when ``stream_options.include_usage`` asked for one,
and ``data: [DONE]``. An upstream that broke off mid-answer, or a job that failed, ends
the stream with an error event (``{"error": {…}}``, which the ``openai`` SDK raises).

Each waiting stream holds one connection of the process's pool while it blocks: at most
``MAX_OPEN_STREAMS`` are open at once in a process (the route answers 503 beyond), so
streams never take the connections every other request needs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import RedisError

from api.deps import async_jobs
from core import keys
from core.connections import get_async_redis
from core.contract import BatchEndpoint, JobResult
from core.errors import StorageUnavailable
from core.openai_batch import completion_body
from core.records import JobRecord
from core.settings import get_settings

__all__ = ["MAX_OPEN_STREAMS", "full", "openai_events"]

BLOCK_MS = 2_000
"""One blocking read's longest wait (and at most half the client's socket timeout).
Between two, the record is read once, in case the job was final before its relay began."""


MAX_OPEN_STREAMS = 500
"""Streams a process relays at once: half its Redis pool (``core.connections.MIN_POOL``)."""

_open = 0  # streams relaying now in this process (one event loop: no lock needed)


def full() -> bool:
    """Whether this process relays as many streams as it may (a new one gets 503)."""
    return _open >= MAX_OPEN_STREAMS


async def openai_events(
    endpoint: BatchEndpoint, record: JobRecord, model: str, include_usage: bool, wait_s: float
) -> AsyncIterator[str]:
    """The job's answer as server-sent events, each as soon as it is known; Redis gone
    quiet ends them with an error event (the job goes on: ``GET /v1/jobs/{id}``)."""
    global _open
    _open += 1
    try:
        async for event in _relayed(endpoint, record, model, include_usage, wait_s):
            yield event
    except (RedisError, StorageUnavailable) as exc:
        message = f"the job store did not answer ({type(exc).__name__}); GET /v1/jobs/{record.id}"
        yield _error(message, "storage_unavailable")
    finally:
        _open -= 1


async def _relayed(
    endpoint: BatchEndpoint, record: JobRecord, model: str, include_usage: bool, wait_s: float
) -> AsyncIterator[str]:
    chunks = _Chunks(endpoint, record.id, model)
    # Each blocking read ends well inside the client's socket timeout.
    block_ms = min(BLOCK_MS, int(get_settings().redis_socket_timeout_s * 500))
    client, key, last = get_async_redis(), keys.job_stream(record.id), "0-0"
    deadline = asyncio.get_running_loop().time() + wait_s
    sent = ""  # the text relayed so far
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        block = max(1, int(min(block_ms, left * 1000)))  # BLOCK 0 would wait for ever
        found = await client.xread({key: last}, count=256, block=block)
        entries = _entries(found)
        if not entries:
            latest = await async_jobs().get(record.id)
            if latest is not None and latest.status.is_final:
                async for event in _final(chunks, latest, sent, include_usage):
                    yield event
                return
        for entry_id, fields in entries:
            last = entry_id
            if "p" in fields:
                sent += fields["p"]
                yield _event(chunks.piece(fields["p"]))
            elif "error" in fields:
                yield _error(f"{fields['error']} (job {record.id})")
                return
            elif "end" in fields:
                latest = await async_jobs().get(record.id) or record
                async for event in _final(chunks, latest, sent, include_usage):
                    yield event
                return
    yield _error(f"no answer in time; GET /v1/jobs/{record.id} will have it", "timeout")


async def _final(
    chunks: _Chunks, record: JobRecord, sent: str, include_usage: bool
) -> AsyncIterator[str]:
    """The end: what the record's answer holds beyond the pieces relayed (all of it when
    none was: the cache, an excerpt, an hf upstream; the rest, had the relay dropped
    some), the last chunk, the usage, ``[DONE]``; or the job's error."""
    result = record.result
    if result is None:
        message = record.error.message if record.error else "the job has no answer"
        yield _error(f"{message} (job {record.id})")
        return
    if not result.text.startswith(sent):  # pieces went missing mid-way: not this answer
        yield _error(f"the relayed answer lost pieces; GET /v1/jobs/{record.id} has it whole")
        return
    if rest := result.text[len(sent) :]:
        yield _event(chunks.piece(rest))
    yield _event(chunks.last(result))
    if include_usage:
        yield _event(chunks.usage(result))
    yield "data: [DONE]\n\n"


class _Chunks:
    """OpenAI's chunk objects of one answer (``chat.completion.chunk`` or
    ``text_completion``), all with the same id."""

    def __init__(self, endpoint: BatchEndpoint, job_id: str, model: str) -> None:
        self._chat = endpoint == "/v1/chat/completions"
        self._endpoint, self._job_id, self._model = endpoint, job_id, model
        self._head = {
            "id": f"{'chatcmpl' if self._chat else 'cmpl'}-{job_id}",
            "object": "chat.completion.chunk" if self._chat else "text_completion",
            "created": int(time.time()),
        }
        self._first = True

    def piece(self, text: str) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": text}
        if self._first:
            delta = {"role": "assistant", **delta}
            self._first = False
        return self._chunk(delta, text, None, self._model)

    def last(self, result: JobResult) -> dict[str, Any]:
        body = completion_body(self._endpoint, self._job_id, result, self._job_id)
        chunk = self._chunk({}, "", result.finish_reason or "stop", result.model)
        return {**chunk, "genq": body["genq"]}

    def usage(self, result: JobResult) -> dict[str, Any]:
        body = completion_body(self._endpoint, self._job_id, result, self._job_id)
        return {**self._head, "model": result.model, "choices": [], "usage": body.get("usage")}

    def _chunk(
        self, delta: dict[str, Any], text: str, finish: str | None, model: str
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        choice |= {"delta": delta} if self._chat else {"text": text}
        return {**self._head, "model": model, "choices": [choice]}


def _entries(found: Any) -> list[tuple[str, dict[str, str]]]:
    """XREAD's entries of the one stream read (``[[key, [(id, fields), …]]]``: genq's
    clients speak RESP2); none when the wait ran out."""
    return [(str(entry_id), dict(fields)) for entry_id, fields in found[0][1]] if found else []


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error(message: str, code: str | None = None) -> str:
    error = {"message": message, "type": "server_error", "param": None, "code": code}
    return _event({"error": error})
