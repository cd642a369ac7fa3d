"""The status codes genq's routes answer besides their success, for the OpenAPI schema:
every code a route can return is documented (schemathesis checks it in ``make test``)."""

from __future__ import annotations

from typing import Any

__all__ = ["BY_ID", "CREATES", "SUBMITS", "V1"]

V1: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or unknown API key"},
    503: {"description": "Redis (job store and broker) unreachable: see Retry-After"},
}
"""Every ``/v1`` route: a key is needed, and Redis may be down."""

BY_ID: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such object for this key (another key's objects included)"},
}
"""Routes that name an object: it may not exist, or belong to another key."""

CREATES: dict[int | str, dict[str, Any]] = {
    400: {"description": "a body that cannot be parsed (not UTF-8, broken multipart)"},
    408: {"description": "the request body did not arrive within GENQ_BODY_TIMEOUT_S"},
    409: {"description": "the Idempotency-Key was used with another request, or is in use"},
    413: {"description": "the request body is over its limit"},
}
"""POST routes that create something: bounded bodies and idempotency keys."""

SUBMITS: dict[int | str, dict[str, Any]] = {
    **CREATES,
    429: {
        "description": "the key is over its limits (GENQ_KEY_MAX_OPEN, GENQ_KEY_RATE_PER_MIN): "
        "nothing was accepted; see Retry-After"
    },
}
"""POST routes that submit work: also the key's limits."""
