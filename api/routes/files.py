"""``/v1/files``: OpenAI's Files API, for batch input files and batch output.

An upload is stored as it arrives, never whole in memory; an output or error file is a
batch's result lines, readable (what has finished so far) while the batch runs. Every
file is visible only to the key that created it: any other key gets 404.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile, status
from fastapi.responses import StreamingResponse

from api.auth import Principal
from api.deps import BatchesDep, FilesDep, PrincipalDep, RedisDep, SettingsDep
from api.idempotency import Idempotency, IdempotencyKey, fingerprint
from api.responses import BY_ID, CREATES, V1
from core.batches import BatchStore
from core.errors import StorageUnavailable
from core.files import FileRecord, FileStore, TooLarge
from core.paging import list_object

router = APIRouter(prefix="/v1/files", tags=["files"], responses=V1)

#: Bytes read from an upload at a time.
UPLOAD_CHUNK_BYTES = 1 << 20


def unavailable() -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail="the file store (Redis) is unreachable; nothing was changed, try again shortly",
        headers={"Retry-After": "5"},
    )


def too_large(limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        detail=f"the file is larger than the limit of {limit} bytes (GENQ_MAX_UPLOAD_BYTES)",
    )


def owned(files: FileStore, file_id: str, principal: Principal) -> FileRecord:
    """The file, if this key created it; 404 for any other file, as for one that is not."""
    try:
        record = files.get(file_id) if len(file_id) <= 64 else None
    except StorageUnavailable as exc:
        raise unavailable() from exc
    if record is None or record.owner != principal.owner:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no file {file_id!r}")
    return record


def file_object(record: FileRecord, batches: BatchStore, ttl_s: int) -> dict[str, Any]:
    """The file as OpenAI's ``File`` object."""
    size = record.bytes
    if record.batch_id is not None:
        batch = batches.get(record.batch_id)
        size = 0
        if batch is not None:
            counts = batch.counts
            size = counts.output_bytes if record.kind == "output" else counts.error_bytes
    return {
        "id": record.id,
        "object": "file",
        "bytes": size,
        "created_at": record.created_at,
        "expires_at": record.created_at + ttl_s,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
    }


@router.post("", responses=CREATES)
def upload(
    file: Annotated[UploadFile, File(description="A JSONL file of batch request lines")],
    purpose: Annotated[Literal["batch"], Form(description="Only `batch` is served here")],
    principal: PrincipalDep,
    settings: SettingsDep,
    files: FilesDep,
    batches: BatchesDep,
    client: RedisDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Upload a batch input file (multipart, ``purpose=batch``)."""
    limit = settings.max_upload_bytes  # the whole body's: api.limits
    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        while chunk := file.file.read(UPLOAD_CHUNK_BYTES):
            digest.update(chunk)
            yield chunk

    name = file.filename or "upload.jsonl"
    try:
        record = files.upload(principal.owner, name, purpose, chunks(), limit)
        claim = Idempotency.of(
            client,
            principal.owner,
            "files",
            idempotency_key,
            fingerprint(purpose, name, digest.digest()),
        )
        earlier = claim.claim()
        if earlier is not None:
            files.delete(record.id, principal.owner)
            record = owned(files, earlier, principal)
        else:
            claim.done(record.id)
        return file_object(record, batches, settings.result_ttl_s)
    except TooLarge as exc:
        raise too_large(exc.limit) from exc
    except StorageUnavailable as exc:
        raise unavailable() from exc


@router.get("")
def list_files(
    principal: PrincipalDep,
    settings: SettingsDep,
    files: FilesDep,
    batches: BatchesDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """This key's files, newest first (uploads, and batches' output and error files);
    ``purpose`` keeps one purpose's; ``after`` is the last id of the previous page."""
    try:
        found, more = files.page(principal.owner, after, limit)
        data = [
            file_object(record, batches, settings.result_ttl_s)
            for record in found
            if purpose is None or record.purpose == purpose
        ]
    except StorageUnavailable as exc:
        raise unavailable() from exc
    return list_object(data, more)


@router.get("/{file_id}", responses=BY_ID)
def retrieve(
    file_id: str,
    principal: PrincipalDep,
    settings: SettingsDep,
    files: FilesDep,
    batches: BatchesDep,
) -> dict[str, Any]:
    """The file object."""
    record = owned(files, file_id, principal)
    try:
        return file_object(record, batches, settings.result_ttl_s)
    except StorageUnavailable as exc:
        raise unavailable() from exc


@router.get("/{file_id}/content", response_class=StreamingResponse, responses=BY_ID)
def content(
    file_id: str, principal: PrincipalDep, files: FilesDep, batches: BatchesDep
) -> StreamingResponse:
    """The file's bytes, streamed: an upload as sent, a batch's lines as written so far."""
    record = owned(files, file_id, principal)
    if record.batch_id is None:
        return StreamingResponse(files.content(record.id), media_type="application/octet-stream")
    lines = batches.lines(record.batch_id, "output" if record.kind == "output" else "error")
    return StreamingResponse(lines, media_type="application/jsonl")


@router.delete("/{file_id}", responses=BY_ID)
def delete(file_id: str, principal: PrincipalDep, files: FilesDep) -> dict[str, Any]:
    """Delete the file (a batch's output file: the file, not the batch's lines)."""
    record = owned(files, file_id, principal)
    try:
        files.delete(record.id, principal.owner)
    except StorageUnavailable as exc:
        raise unavailable() from exc
    return {"id": record.id, "object": "file", "deleted": True}
