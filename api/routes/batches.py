"""``/v1/batches``: OpenAI's Batch API over genq's queue.

Create validates every line of the input file before anything is accepted (all or
nothing: a bad line fails the batch with the line errors), checks the key's limits
(``core.quotas``), then keeps every item's message and enrolls the batch with the
scheduler (``core.scheduler``) in one Redis transaction; its items reach the ``batch``
queue in turn with other batches'. Output and error files are readable while the batch
runs. A batch's ``metadata`` may hold ``genq_fallback: "none"``: its items then fail
with ``service_unavailable`` rather than answer degraded, and ``genq_failover: "none"``:
only the primary target answers them (a line's own ``fallback`` or ``failover`` wins).
genq's own figures are in a ``genq`` field: counts by source, the items a cancel or the
expiry kept from running, and the backlog still waiting for its turn.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal
from api.batch_input import BatchPolicy, parse_lines
from api.deps import BatchesDep, CeleryDep, FilesDep, PrincipalDep, RedisDep, SettingsDep
from api.idempotency import Idempotency, IdempotencyKey, fingerprint
from api.publish import TaskMessages
from api.responses import BY_ID, SUBMITS, V1
from api.routes.files import owned, unavailable
from api.routes.jobs import over_quota
from core.batches import BatchRecord, BatchStore, item_request_id
from core.contract import (
    QUEUE_BATCH,
    BatchEndpoint,
    GenerateRequest,
    batch_item_json,
    task_argsrepr,
)
from core.errors import StorageUnavailable
from core.files import FileRecord, new_file_id
from core.logs import current_request_id
from core.openai_batch import batch_object
from core.paging import list_object
from core.quotas import OverQuota, Quotas, quota_of

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=V1)

#: The metadata key by which a batch refuses degraded answers.
REFUSE_DEGRADED_KEY = "genq_fallback"
#: The metadata key by which a batch is answered by the primary target only.
PRIMARY_ONLY_KEY = "genq_failover"


class BatchCreate(BaseModel):
    """OpenAI's batch create parameters (``output_expires_after`` is accepted, unused)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: BatchEndpoint
    completion_window: Literal["24h"]
    metadata: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None
    ) = Field(default=None, max_length=16)
    output_expires_after: dict[str, Any] | None = None


def _owned(batches: BatchStore, batch_id: str, principal: Principal) -> BatchRecord:
    try:
        record = batches.get(batch_id) if len(batch_id) <= 64 else None
    except StorageUnavailable as exc:
        raise unavailable() from exc
    if record is None or record.owner != principal.owner:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no batch {batch_id!r}")
    return record


@router.post(
    "",
    responses=SUBMITS
    | BY_ID
    | {400: {"description": "the input file is not a batch file, or a bad Idempotency-Key"}},
)
def create(
    body: BatchCreate,
    principal: PrincipalDep,
    settings: SettingsDep,
    files: FilesDep,
    batches: BatchesDep,
    celery: CeleryDep,
    client: RedisDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Validate the input file and enqueue every request; the batch comes back
    ``in_progress``, or ``failed`` with the line errors (nothing enqueued)."""
    claim = Idempotency.of(
        client, principal.owner, "batches", idempotency_key, fingerprint(body.model_dump_json())
    )
    try:
        earlier = claim.claim()
        if earlier is not None:
            return batch_object(_owned(batches, earlier, principal))
        try:
            record = _create(body, principal, settings, files, batches, celery, client)
        except OverQuota as exc:
            claim.release()
            raise over_quota(exc) from exc
        except BaseException:
            claim.release()
            raise
        claim.done(record.id)
        return batch_object(record)
    except StorageUnavailable as exc:
        raise unavailable() from exc


def _create(
    body: BatchCreate,
    principal: Principal,
    settings: SettingsDep,
    files: FilesDep,
    batches: BatchesDep,
    celery: CeleryDep,
    client: RedisDep,
) -> BatchRecord:
    source = owned(files, body.input_file_id, principal)
    if source.kind != "upload" or source.purpose != "batch":
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"input_file_id: {source.id!r} is not an uploaded file with purpose 'batch'",
        )
    metadata = body.metadata or {}
    policy = BatchPolicy(
        fallback="none" if metadata.get(REFUSE_DEGRADED_KEY) == "none" else "auto",
        failover="none" if metadata.get(PRIMARY_ONLY_KEY) == "none" else "auto",
    )
    parsed = parse_lines(files.lines(source.id), body.endpoint, settings, policy)
    limit = settings.max_batch_requests
    if len(parsed.requests) + parsed.error_count > limit:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            detail=f"the input file holds more than {limit} requests (GENQ_MAX_BATCH_REQUESTS)",
        )
    if not parsed.error_count:  # a batch that will fail validation adds no work
        quotas = Quotas(client, quota_of(settings), settings.job_ttl_s)
        quotas.admit(principal.owner, len(parsed.requests))
    output_id, error_id = new_file_id(), new_file_id()
    record = batches.create(
        principal.owner,
        source.id,
        body.endpoint,
        body.completion_window,
        body.metadata,
        output_id,
        error_id,
    )
    for file_id, kind in ((output_id, "output"), (error_id, "error")):
        output = FileRecord(
            id=file_id,
            owner=principal.owner,
            filename=f"{record.id}_{kind}.jsonl",
            purpose="batch_output",
            kind=kind,
            bytes=0,
            created_at=int(time.time()),
            batch_id=record.id,
        )
        files.register_output(output)
    if parsed.error_count:
        batches.fail(record.id, parsed.errors)
    else:
        messages = TaskMessages(celery, QUEUE_BATCH)
        encoded = _messages(messages, record, parsed.requests, current_request_id())
        batches.start(record.id, principal.owner, QUEUE_BATCH, encoded, len(parsed.requests))
        log.info("api.batch_started", extra={"batch_id": record.id, "items": len(parsed.requests)})
    found = batches.get(record.id)
    assert found is not None
    return found


def _messages(
    messages: TaskMessages,
    batch: BatchRecord,
    requests: list[tuple[str, GenerateRequest]],
    submitted_by: str,
) -> Iterator[bytes]:
    """Each item's ``genq.generate`` message (a ``JobMessage``, whose ``job_id`` is the
    item's request id: ``batch_item_json``, what the worker decodes), carrying the id
    of the request that created the batch. kombu's delivery tags are this batch's own
    random prefix and the item's index: unique, without a UUID made per item."""
    tags = uuid.uuid4().hex
    for index, (custom_id, request) in enumerate(requests):
        request_id = item_request_id(batch.id, index)
        item = {"batch_id": batch.id, "index": index, "custom_id": custom_id}
        item["endpoint"] = batch.endpoint
        payload = batch_item_json(request_id, request, item, batch.owner)
        # Flower shows argsrepr: the item's ids, never its prompt.
        argsrepr = task_argsrepr(request_id, batch.id)
        tag = f"{tags}-{index}"
        yield messages.message(
            request_id, payload, argsrepr, request_id=submitted_by, delivery_tag=tag
        )


@router.get("/{batch_id}", responses=BY_ID)
def retrieve(batch_id: str, principal: PrincipalDep, batches: BatchesDep) -> dict[str, Any]:
    """The batch object."""
    return batch_object(_owned(batches, batch_id, principal))


@router.post("/{batch_id}/cancel", responses=BY_ID)
def cancel(batch_id: str, principal: PrincipalDep, batches: BatchesDep) -> dict[str, Any]:
    """Stop the batch: requests not yet started will not run; running ones finish; it
    ends ``cancelled`` with its partial files."""
    _owned(batches, batch_id, principal)
    try:
        batches.cancel(batch_id)
    except StorageUnavailable as exc:
        raise unavailable() from exc
    return batch_object(_owned(batches, batch_id, principal))


@router.get("")
def list_batches(
    principal: PrincipalDep,
    batches: BatchesDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """This key's batches, newest first; ``after`` is the last id of the previous page."""
    try:
        found, more = batches.page(principal.owner, after, limit)
    except StorageUnavailable as exc:
        raise unavailable() from exc
    data = [batch_object(b) for b in found]
    return list_object(data, more)
