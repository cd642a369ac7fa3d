"""Files, as the OpenAI Files API shows them: uploads (``purpose: batch``) and the output
and error files of batches.

An upload's bytes are one Redis string (``keys.file_content``), appended chunk by chunk
as they arrive and read back in ranges, so neither side holds a whole file in memory. A
batch's output and error files are views of its result lists (``core.batches``): their
record names the batch, and their content is read line by line as the batch runs.
Every file belongs to the key that created it (``owner``) and expires with
``GENQ_RESULT_TTL_S``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar

import redis
from pydantic import BaseModel

from core import keys
from core.errors import StorageUnavailable
from core.paging import newest_first

__all__ = ["FileKind", "FileRecord", "FileStore", "TooLarge", "new_file_id"]

T = TypeVar("T")
FileKind = Literal["upload", "output", "error"]
#: Bytes read from Redis per range when an upload is streamed back.
READ_CHUNK_BYTES = 1 << 20


class TooLarge(Exception):
    """Raised when an upload goes past the size limit; nothing of it is kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than {limit} bytes (GENQ_MAX_UPLOAD_BYTES)")
        self.limit = limit


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


class FileRecord(BaseModel):
    """A file as stored."""

    id: str
    owner: str
    filename: str
    purpose: str
    kind: FileKind
    bytes: int
    created_at: int
    batch_id: str | None = None


class FileStore:
    """Files in Redis; every call raises ``StorageUnavailable`` when Redis is down.

    Give it a client that answers bytes (``connections.get_binary_redis``): an upload's
    content is whatever the client sent."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s

    def upload(
        self, owner: str, filename: str, purpose: str, chunks: Iterable[bytes], limit: int
    ) -> FileRecord:
        """Store an upload chunk by chunk; ``TooLarge`` (nothing kept) past ``limit`` bytes."""
        file_id = new_file_id()
        content = keys.file_content(file_id)
        size = 0
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    self._redis.delete(content)
                    raise TooLarge(limit)
                pipe = self._redis.pipeline(transaction=False)
                pipe.append(content, chunk)
                pipe.expire(content, self._ttl_s)
                pipe.execute()
            record = FileRecord(
                id=file_id,
                owner=owner,
                filename=filename,
                purpose=purpose,
                kind="upload",
                bytes=size,
                created_at=int(time.time()),
            )
            self._save(record)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"file store unreachable: {type(exc).__name__}") from exc
        return record

    def register_output(self, record: FileRecord) -> None:
        """Record a batch's output or error file (its content is the batch's lines)."""
        self._guard(lambda: self._save(record))

    def _save(self, record: FileRecord) -> None:
        fields = record.model_dump(exclude_none=True)
        index = keys.files(record.owner)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(keys.file(record.id), mapping={k: str(v) for k, v in fields.items()})
        pipe.expire(keys.file(record.id), self._ttl_s)
        pipe.zadd(index, {record.id: time.time() * 1000})
        pipe.expire(index, self._ttl_s)
        pipe.execute()

    def page(self, owner: str, after: str | None, limit: int) -> tuple[list[FileRecord], bool]:
        """One owner's files, newest first, after the file ``after``; and whether more
        follow. Ids of files gone (expired, deleted) are dropped from the index as met."""
        index = keys.files(owner)

        def read() -> tuple[list[tuple[str, Any]], bool]:
            ids, more = newest_first(self._redis, index, after, limit)
            pipe = self._redis.pipeline(transaction=False)
            for file_id in ids:
                pipe.hgetall(keys.file(file_id))
            return list(zip(ids, pipe.execute(), strict=True)), more

        found, more = self._guard(read)
        gone = [file_id for file_id, fields in found if not fields]
        if gone:
            self._guard(lambda: self._redis.zrem(index, *gone))
        records = [FileRecord.model_validate(_text(fields)) for _, fields in found if fields]
        return records, more

    def get(self, file_id: str) -> FileRecord | None:
        """The file, or None if there is no such file (or it expired)."""
        fields = self._guard(lambda: self._redis.hgetall(keys.file(file_id)))
        return FileRecord.model_validate(_text(fields)) if fields else None

    def delete(self, file_id: str, owner: str) -> None:
        def drop() -> None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(keys.file(file_id), keys.file_content(file_id))
            pipe.zrem(keys.files(owner), file_id)
            pipe.execute()

        self._guard(drop)

    def content(self, file_id: str) -> Iterator[bytes]:
        """An upload's bytes, read in ranges of ``READ_CHUNK_BYTES``."""
        key, start = keys.file_content(file_id), 0
        while True:
            data = self._range(key, start, start + READ_CHUNK_BYTES - 1)
            if data:
                yield data
            if len(data) < READ_CHUNK_BYTES:
                return
            start += READ_CHUNK_BYTES

    def _range(self, key: str, start: int, end: int) -> bytes:
        chunk = self._guard(lambda: self._redis.getrange(key, start, end))
        return chunk.encode() if isinstance(chunk, str) else bytes(chunk)

    def lines(self, file_id: str) -> Iterator[bytes]:
        """An upload's lines (without their newline), read range by range."""
        rest = b""
        for chunk in self.content(file_id):
            *complete, rest = (rest + chunk).split(b"\n")
            yield from complete
        if rest:
            yield rest

    @staticmethod
    def _guard(call: Callable[[], T]) -> T:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"file store unreachable: {type(exc).__name__}") from exc


def _text(fields: Mapping[Any, Any]) -> dict[str, str]:
    def text(value: object) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return {text(k): text(v) for k, v in fields.items()}
