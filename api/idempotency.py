"""``Idempotency-Key`` on the POSTs that create something (jobs, files, batches).

The same key with the same request gives back the object the first request created; the
same key with a different request is a 409, as is a second request while the first is
still being processed. Keys are per API key and per route, and expire after a day.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Header, HTTPException, status
from redis import asyncio as aioredis

from core import keys
from core.errors import StorageUnavailable

__all__ = ["TTL_S", "AsyncIdempotency", "Idempotency", "IdempotencyKey", "fingerprint"]

TTL_S = 86_400
MAX_KEY_CHARS = 255

IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=MAX_KEY_CHARS,
        description="Retrying with the same key gives back what the first request created",
    ),
]
"""The ``Idempotency-Key`` header parameter of a route that creates something."""


def fingerprint(*parts: bytes | str) -> str:
    """A digest of what makes two requests the same."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


@dataclass
class Idempotency:
    """One request's claim on its key (no key: every call is a no-op)."""

    client: redis.Redis
    redis_key: str | None
    print_: str

    @classmethod
    def of(
        cls, client: redis.Redis, owner: str, scope: str, header: str | None, print_: str
    ) -> Idempotency:
        redis_key = keys.idempotency(owner, scope, header) if header else None
        return cls(client, redis_key, print_)

    def claim(self) -> str | None:
        """None: go on and create (the key is now held); else the id created before."""
        if self.redis_key is None:
            return None
        try:
            if self.client.set(self.redis_key, f"{self.print_}:", nx=True, ex=TTL_S):
                return None
            stored = self.client.get(self.redis_key)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable("idempotency keys unreachable") from exc
        return _earlier(stored, self.print_)

    def done(self, object_id: str) -> None:
        """Remember what this key created."""
        if self.redis_key is not None:
            self.client.set(self.redis_key, f"{self.print_}:{object_id}", ex=TTL_S)

    def release(self) -> None:
        """Creation failed: the key may be used again."""
        if self.redis_key is not None:
            self.client.delete(self.redis_key)


def _earlier(stored: object, print_: str) -> str:
    """The id a key's first request created, or the 409 that says why there is none."""
    text = stored.decode() if isinstance(stored, bytes) else str(stored or ":")
    first_print, _, object_id = text.partition(":")
    if first_print != print_:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail="this Idempotency-Key was used with a different request; use a new key",
        )
    if not object_id:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail="a request with this Idempotency-Key is still being processed; retry",
            headers={"Retry-After": "1"},
        )
    return object_id


@dataclass
class AsyncIdempotency:
    """:class:`Idempotency` for asyncio routes (no key: every call is a no-op)."""

    client: aioredis.Redis
    redis_key: str | None
    print_: str

    @classmethod
    def of(
        cls, client: aioredis.Redis, owner: str, scope: str, header: str | None, print_: str
    ) -> AsyncIdempotency:
        redis_key = keys.idempotency(owner, scope, header) if header else None
        return cls(client, redis_key, print_)

    async def claim(self) -> str | None:
        """None: go on and create (the key is now held); else the id created before."""
        if self.redis_key is None:
            return None
        try:
            if await self.client.set(self.redis_key, f"{self.print_}:", nx=True, ex=TTL_S):
                return None
            stored = await self.client.get(self.redis_key)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable("idempotency keys unreachable") from exc
        return _earlier(stored, self.print_)

    async def done(self, object_id: str) -> None:
        """Remember what this key created."""
        if self.redis_key is not None:
            await self.client.set(self.redis_key, f"{self.print_}:{object_id}", ex=TTL_S)

    async def release(self) -> None:
        """Creation failed: the key may be used again."""
        if self.redis_key is not None:
            await self.client.delete(self.redis_key)
