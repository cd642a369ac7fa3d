"""The result cache: successful generations in Redis, keyed by their canonical request.

Every successful upstream generation is stored under ``keys.cache(digest)``, where the
digest is the SHA-256 of the canonical JSON (sorted keys, no whitespace, UTF-8) of::

    {"v": 3, "scope": <owner digest, or null if shared>, "protocol": ..., "model": ...,
     "prompt": ..., "messages": [...],
     "params": <every GenerationParams field>, "context": <sha256 of the context docs>,
     "context_mode": ...}

so it covers everything the model was sent (``worker.prompt`` builds that from these)

and the order in which a client lists parameters or document fields never changes the
key (LiteLLM's cache key does depend on it). The scope is the submitting key's owner
digest unless ``GENQ_CACHE_SCOPE=shared``. Not in the key: the job id, the ``cache`` and
``fallback`` policies and the upstream's base URL. Entries expire after
``GENQ_CACHE_TTL_S``; an entry larger than ``GENQ_CACHE_MAX_ENTRY_BYTES`` is not stored.

A cache never fails a job: Redis errors and corrupt entries read as a miss, and a write
that cannot be made returns False; both are logged. The worker writes entries with the
job's final record (:meth:`ResultCache.entry`) and reads them with
:meth:`ResultCache.get`, the one decoder of an entry (``worker.fallback``).

No per-process LRU in front of Redis. ``bench/fallback_micro_bench.py`` measured a hit
through Redis on loopback at 0.12-0.22 ms (p50; a raw GET: 0.11-0.16 ms) against
0.1-0.3 µs for a dict. An LRU would save a tenth of a millisecond on a fallback path
that already makes several Redis round trips (job record writes) and spends
milliseconds in Celery, while it would add per-process memory (up to entries × 64 KiB),
expiry bookkeeping of its own to honour the TTL, and a second copy that can disagree
with Redis. It would only pay while Redis is down, and then the broker is down too and
no job arrives to be answered. Logged events: ``cache.unavailable`` (Redis down or slow),
``cache.failed`` (another Redis error), ``cache.corrupt``, ``cache.entry_too_large``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from core import keys, scripts
from core.contract import GenerateRequest

__all__ = ["KEY_VERSION", "CachedGeneration", "ResultCache", "cache_key"]

log = logging.getLogger(__name__)

KEY_VERSION = 3
"""Part of every key: bump it when the canonical form changes, so old entries miss."""


def _canonical(value: object) -> str:
    """The one JSON text of ``value`` that two equal requests share."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(value: object) -> str:
    """SHA-256 hex of the canonical JSON (pydantic refuses lone surrogates: UTF-8 works)."""
    return hashlib.sha256(_canonical(value).encode("utf-8")).hexdigest()


def _context_digest(request: GenerateRequest) -> str:
    """SHA-256 over every field of every context document, in order.

    Each field is length-prefixed, so no two different document lists hash alike; this
    avoids JSON-encoding up to megabytes of context (5x faster on 10 kB, measured).
    """
    digest = hashlib.sha256()
    for doc in request.context:
        for field in (doc.id, doc.text, doc.title, doc.url):
            if field is None:
                digest.update(b"\xff")
            else:
                data = field.encode("utf-8", "surrogatepass")
                digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def cache_key(protocol: str, model: str, request: GenerateRequest, scope: str | None = None) -> str:
    """The Redis key of ``request``'s answer from ``model`` over ``protocol`` (pure), in
    ``scope`` (the owner's digest: one key's answers never serve another key's jobs;
    None: shared by every key)."""
    canonical = {
        "v": KEY_VERSION,
        "scope": scope,
        "protocol": protocol,
        "model": model,
        "prompt": request.prompt,
        "messages": [m.model_dump() for m in request.messages] if request.messages else None,
        "params": request.params.model_dump(mode="json"),
        "context": _context_digest(request),
        "context_mode": request.context_mode,
    }
    if request.failover == "none":
        # Only the primary answers such a job: its answers are cached apart, so a
        # failover target's answer to the same request never serves it.
        canonical["primary_only"] = True
    return keys.cache(_digest(canonical))


@dataclass(frozen=True)
class CachedGeneration:
    """A generation as cached: what a cache answer returns, and when it was made."""

    text: str
    model: str
    usage: dict[str, int] | None
    created_at: float
    """Epoch seconds of the upstream answer, so a cached result can say its age."""
    target: str | None = None
    """The circuit name of the target that answered (None in entries older than failover)."""

    def encode(self) -> bytes:
        """The stored form: compact JSON in UTF-8 (ASCII escapes if text has a lone surrogate)."""
        fields = {
            "text": self.text,
            "model": self.model,
            "usage": self.usage,
            "created_at": self.created_at,
            "target": self.target,
        }
        try:
            return _canonical(fields).encode("utf-8")
        except UnicodeEncodeError:  # JSON escapes carry a lone surrogate; UTF-8 cannot
            return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def decode(cls, raw: str | bytes) -> CachedGeneration:
        """The entry stored as ``raw``; ValueError when it is not one."""
        data = json.loads(raw)
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        text, model, usage, created_at = (
            data.get(k) for k in ("text", "model", "usage", "created_at")
        )
        if not (isinstance(text, str) and isinstance(model, str)):
            raise ValueError("text and model must be strings")
        if not isinstance(created_at, int | float) or isinstance(created_at, bool):
            raise ValueError("created_at must be a number")
        target = data.get("target")
        if target is not None and not isinstance(target, str):
            raise ValueError("target must be a string")
        return cls(text, model, _usage(usage), float(created_at), target)


def _usage(value: object) -> dict[str, int] | None:
    """Token counts as stored, or ValueError when they are not ``{str: int}``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("usage must be an object")
    items = value.items()
    if not all(isinstance(v, int) and not isinstance(v, bool) for _, v in items):
        raise ValueError("usage counts must be integers")
    return {str(k): int(v) for k, v in items}


class ResultCache:
    """Cached generations in Redis; every failure is a miss or a False, never an error.

    Give it a client without retries (``retry=Retry(NoBackoff(), 0)``) and with socket
    timeouts: redis-py 8's default retries a refused connection 10 times, ~4.5 s per
    call, which would turn a fallback "at once" into seconds while Redis is down.
    """

    def __init__(self, client: redis.Redis, ttl_s: int, max_entry_bytes: int) -> None:
        if ttl_s <= 0 or max_entry_bytes <= 0:
            raise ValueError("ttl_s and max_entry_bytes must be positive")
        self._client = client
        self._lookup = client.register_script(scripts.load("core", "cache_get"))
        self._ttl_s = ttl_s
        self._max_entry_bytes = max_entry_bytes

    def get(self, key: str) -> CachedGeneration | None:
        """The entry under ``key``; None on a miss, a Redis error or a corrupt entry. The
        lookup is counted, hit or miss, in the cluster's counts (``core.stats``)."""
        try:
            raw: Any = self._lookup(keys=[key, keys.stats("cache")])
            return None if raw is None else CachedGeneration.decode(raw)
        except redis.RedisError as exc:
            _log_redis_error("get", exc)
        except (ValueError, RecursionError) as exc:  # JSON, UTF-8 (client-side too), fields
            log.warning("cache.corrupt", extra={"key": key, "error": type(exc).__name__})
        return None

    def put(self, key: str, generation: CachedGeneration) -> bool:
        """Store ``generation`` for ``ttl_s``; False when too large or Redis fails."""
        value = self._bounded(key, generation)
        if value is None:
            return False
        try:
            self._client.set(key, value, ex=self._ttl_s)
        except redis.RedisError as exc:
            _log_redis_error("put", exc)
            return False
        return True

    def entry(self, key: str, generation: CachedGeneration) -> tuple[str, bytes, int] | None:
        """What ``put`` would write, ``(key, value, ttl_s)``, for a caller's own write
        (the job record's final one); None when too large."""
        value = self._bounded(key, generation)
        return None if value is None else (key, value, self._ttl_s)

    def _bounded(self, key: str, generation: CachedGeneration) -> bytes | None:
        value = generation.encode()
        if len(value) <= self._max_entry_bytes:
            return value
        log.info(
            "cache.entry_too_large",
            extra={"key": key, "bytes": len(value), "max": self._max_entry_bytes},
        )
        return None


def _log_redis_error(op: str, exc: redis.RedisError) -> None:
    """Redis down or slow is ``cache.unavailable``; anything else (WRONGTYPE…) ``cache.failed``."""
    down = isinstance(exc, redis.ConnectionError | redis.TimeoutError)
    event = "cache.unavailable" if down else "cache.failed"
    log.warning(event, extra={"op": op, "error": type(exc).__name__})
