"""What an upstream's 2xx JSON body says, read by the route that answered it.

- ``text_generation`` (HF's ``/models/{model}``, TGI's ``/generate``): ``generated_text``
  of the object (TGI) or of the list's first item (HF); its ``details`` give
  ``finish_reason``, ``generated_tokens`` (completion tokens) and ``prefill`` (as many
  items as prompt tokens).
- ``completions``: ``choices[0].text``, ``choices[0].finish_reason`` and ``usage``.
- ``chat`` (OpenAI's, and TGI's Messages API): ``choices[0].message.content``, the rest
  as on ``completions``.

Only integer counts are kept of a usage; TGI's ``eos_token`` and ``stop_sequence`` read as
``stop``. A body without the text is UpstreamMalformed, whose message names the shape
that was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import UpstreamMalformed
from worker.protocols.wire import Route

__all__ = ["Answer", "parse_response"]

_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


@dataclass(frozen=True)
class Answer:
    """What an upstream answer says."""

    text: str
    usage: dict[str, int] | None
    finish_reason: str | None


@dataclass(frozen=True)
class _Reading:
    """What a body holds where its route keeps the answer, before the text is checked."""

    text: object
    usage: dict[str, int] | None
    reason: object


def parse_response(route: Route, body: object, origin: str) -> Answer:
    """The answer in a 2xx JSON body of ``route``; UpstreamMalformed when it is not one."""
    parser = _PARSERS[route]
    reading = parser.read(body)
    if not isinstance(reading.text, str):
        raise UpstreamMalformed(
            f"malformed answer from {origin}: {type(body).__name__}, not {parser.expected}"
        )
    reason = reading.reason
    finish = _FINISH.get(reason, reason) if isinstance(reason, str) else None
    return Answer(reading.text, reading.usage, finish)


def _text_generation(body: object) -> _Reading:
    # HF answers a list; TGI, and HF models served by TGI, a single object.
    item = body[0] if isinstance(body, list) and body else body
    details = _get(item, "details")
    usage = _counts({"completion_tokens": _get(details, "generated_tokens")})
    prefill = _get(details, "prefill")
    if isinstance(prefill, list) and prefill:
        usage = (usage or {}) | {"prompt_tokens": len(prefill)}
    return _Reading(_get(item, "generated_text"), usage, _get(details, "finish_reason"))


def _completions(body: object) -> _Reading:
    first = _first_choice(body)
    return _Reading(_get(first, "text"), _counts(_get(body, "usage")), _get(first, "finish_reason"))


def _chat(body: object) -> _Reading:
    first = _first_choice(body)
    text = _get(_get(first, "message"), "content")
    return _Reading(text, _counts(_get(body, "usage")), _get(first, "finish_reason"))


@dataclass(frozen=True)
class _Parser:
    """How one route's body is read, and the shape a malformed one is told it lacks."""

    read: Callable[[object], _Reading]
    expected: str


_PARSERS: dict[Route, _Parser] = {
    "text_generation": _Parser(
        _text_generation, '[{"generated_text": str}] or {"generated_text": str}'
    ),
    "completions": _Parser(_completions, '{"choices": [{"text": str}]}'),
    "chat": _Parser(_chat, '{"choices": [{"message": {"content": str}}]}'),
}


def _first_choice(body: object) -> Any:
    choices = _get(body, "choices")
    return choices[0] if isinstance(choices, list) and choices else None


def _get(value: object, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _counts(value: object) -> dict[str, int] | None:
    """The integer counts of a usage object (booleans, floats and NaN left out)."""
    if not isinstance(value, dict):
        return None
    counts = {
        k: v
        for k, v in value.items()
        if isinstance(v, int) and not isinstance(v, bool) and math.isfinite(v)
    }
    return counts or None
