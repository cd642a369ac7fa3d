"""Bearer-key authentication for the ``/v1`` routes.

Keys come from ``GENQ_API_KEYS`` (and ``GENQ_ADMIN_API_KEYS``). Every presented key is
compared with every configured key in constant time, so timing says nothing about how
much of a key was right. A job belongs to the key that created it: the owner stored
on the record is a digest of that key, never the key itself.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
from dataclasses import dataclass

from pydantic import SecretStr

from core.settings import Settings

__all__ = ["Principal", "authenticate", "owner_of"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner digest of their key, and whether it is an admin key."""

    owner: str
    admin: bool


def owner_of(key: str) -> str:
    """The digest stored as a job's owner (a key never reaches Redis)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _matches(key: bytes, candidates: list[SecretStr]) -> bool:
    found = False
    for candidate in candidates:
        # No early exit: every configured key costs the same compare.
        found |= hmac.compare_digest(key, candidate.get_secret_value().encode())
    return found


def authenticate(key: str, settings: Settings) -> Principal | None:
    """The principal for ``key``, or None when it is not a configured key."""
    raw = key.encode()
    admin = _matches(raw, settings.admin_api_keys)
    user = _matches(raw, settings.api_keys)
    if not (admin or user):
        return None
    return Principal(owner=owner_of(key), admin=admin)


def main() -> None:
    """``python -m api.auth``: the owner id of a key (asked for, not echoed), as
    ``GENQ_KEY_WEIGHTS`` and the scheduler name it; never the key itself."""
    print(owner_of(getpass.getpass("API key: ").strip()))


if __name__ == "__main__":
    main()
