"""Pages of ids kept in a sorted set scored by creation time: OpenAI's list routes
(``after`` the last id of the previous page, newest first)."""

from __future__ import annotations

from typing import Any

from redis import Redis

__all__ = ["list_object", "newest_first"]


def newest_first(
    client: Redis, index: str, after: str | None, limit: int
) -> tuple[list[str], bool]:
    """Up to ``limit`` ids of ``index``, newest first, after the id ``after``; and whether
    more follow. An ``after`` that is not in the index gives an empty page. Two round
    trips at most; Redis errors are the caller's."""
    start = 0
    if after is not None:
        rank: Any = client.zrevrank(index, after)
        if rank is None:
            return [], False
        start = int(rank) + 1
    found: list[Any] = list(client.zrevrange(index, start, start + limit))
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in found]
    return ids[:limit], len(ids) > limit


def list_object(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """One page as OpenAI's list routes answer it (``first_id``, ``last_id``,
    ``has_more``)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }
