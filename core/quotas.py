"""Per-key limits: how much open work a key may have, and how often it may submit.

genq is shared: one key's flood must not stall the others. ``GENQ_KEY_MAX_OPEN`` caps a
key's open work (its jobs not final plus its batch items not done); ``GENQ_KEY_RATE_PER_MIN``
caps its submissions a minute (``POST /v1/jobs``, ``/v1/generate``, ``/v1/batches``),
counted in Redis so every API process shares it. Over either, nothing is written and
the API answers 429 with ``Retry-After`` and the limit. Neither is set by default: a
single team's genq behaves as before.

Both are checked in Lua (``lua/owner_prelude.lua``): a job's check runs in the script
that creates it (exact under any burst); a batch's runs just before it is created (two
batches of one key created at the same moment may together pass the ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from core import keys, scripts
from core.contract import ErrorType
from core.errors import GenqError, StorageUnavailable
from core.settings import Settings

__all__ = ["OverQuota", "Quota", "Quotas", "quota_of", "refusal", "script"]


@dataclass(frozen=True)
class Quota:
    """A key's limits (the same for every key); None: no such limit."""

    max_open: int | None = None
    rate_per_min: int | None = None

    @property
    def args(self) -> list[int]:
        """The Lua scripts' arguments: 0 for a limit not set."""
        return [self.max_open or 0, self.rate_per_min or 0]


def quota_of(settings: Settings) -> Quota:
    return Quota(settings.key_max_open, settings.key_rate_per_min)


class OverQuota(GenqError):
    """A key over one of its limits; nothing was accepted."""

    type = ErrorType.RATE_LIMITED
    transient = True

    def __init__(self, reason: Literal["open", "rate"], limit: int, retry_after_s: int) -> None:
        if reason == "open":
            message = (
                f"this key's open work (jobs not final and batch items not done) would pass "
                f"its limit of {limit} (GENQ_KEY_MAX_OPEN); nothing was accepted: submit "
                "again once some of it is done"
            )
        else:
            message = (
                f"this key submitted more than its limit of {limit} a minute "
                "(GENQ_KEY_RATE_PER_MIN); nothing was accepted"
            )
        super().__init__(message)
        self.reason, self.limit, self.retry_after_s = reason, limit, max(1, retry_after_s)


def refusal(reply: object) -> OverQuota | None:
    """The refusal in a script's reply (``admit()``'s), or None when it admitted."""
    if not isinstance(reply, list):
        return None
    reason, limit, wait = (v.decode() if isinstance(v, bytes) else v for v in reply)
    return OverQuota(cast(Literal["open", "rate"], str(reason)), int(limit), int(wait))


class Quotas:
    """A key's limits checked before work that is not a job (a batch) is accepted."""

    def __init__(self, client: redis.Redis, quota: Quota, ttl_s: int) -> None:
        self._redis, self.quota, self._ttl_s = client, quota, ttl_s
        self._admit = client.register_script(script("owner_admit"))

    def admit(self, owner: str, adding: int) -> None:
        """Count a submission of ``adding`` items by ``owner``; raises ``OverQuota`` when
        it would pass a limit (it is then not counted)."""
        if self.quota == Quota():
            return  # no limits: not even a round trip
        args: list[Any] = [keys.PREFIX, owner, adding, *self.quota.args, self._ttl_s]
        try:
            reply = self._admit(keys=[], args=args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"limits unreachable: {type(exc).__name__}") from exc
        refused = refusal(reply)
        if refused is not None:
            raise refused


def script(name: str) -> str:
    """A script that checks a key's limits, after owner_prelude.lua."""
    return scripts.load("core", name, scripts.load("core", "owner_prelude"))
