"""Streamed answers: the request that asks for one, and its server-sent events read.

=========  ==========================================================================
route      streamed as
=========  ==========================================================================
chat,      OpenAI's chunks: ``"stream": true`` and ``stream_options.include_usage``;
completions  a piece of text a chunk, ``finish_reason`` on the last, then ``usage``,
           then ``data: [DONE]``
text_      TGI's ``/generate_stream``: a token an event, the last with
generation ``generated_text`` and ``details``; HF's text generation: not streamed (the
           answer comes whole, relayed as one piece)
=========  ==========================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from core.errors import UpstreamMalformed, UpstreamUnavailable
from worker.protocols.answers import _counts, _get
from worker.protocols.wire import WireRequest

__all__ = ["Event", "parse_event", "stream_request"]

_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


@dataclass(frozen=True)
class Event:
    """What one event says: a piece of text, and, on the last, why it ended and the usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    done: bool = False
    """The answer is whole (OpenAI's ``[DONE]``, or TGI's last token)."""


def stream_request(protocol: str, wire: WireRequest) -> WireRequest | None:
    """``wire`` asking for a streamed answer; None where the protocol answers whole (hf)."""
    if wire.route in ("chat", "completions"):
        body = {**wire.body, "stream": True, "stream_options": {"include_usage": True}}
        return replace(wire, body=body)
    if protocol == "tgi":
        return replace(wire, url=wire.url.removesuffix("/generate") + "/generate_stream")
    return None


def parse_event(route: str, line: bytes, origin: str) -> Event | None:
    """The event of one line of a server-sent stream; None for other lines (blank,
    comments, ``event:``). An error event raises UpstreamUnavailable; a line that is not
    the route's shape UpstreamMalformed."""
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return Event(done=True)
    try:
        payload = json.loads(data)
    except ValueError:
        raise UpstreamMalformed(f"upstream {origin} sent an event that is not JSON") from None
    if _get(payload, "error") is not None:  # its text is not quoted: it is the upstream's
        raise UpstreamUnavailable(f"upstream {origin} sent an error event mid-answer")
    if route == "text_generation":
        return _tgi(payload, origin)
    return _openai(route, payload)


def _tgi(payload: object, origin: str) -> Event:
    text = _get(_get(payload, "token"), "text")
    if not isinstance(text, str):
        raise UpstreamMalformed(f"upstream {origin} sent a token without text")
    special = _get(_get(payload, "token"), "special") is True
    details = _get(payload, "details")
    reason = _get(details, "finish_reason")
    usage = _counts({"completion_tokens": _get(details, "generated_tokens")})
    return Event(
        text="" if special else text,
        finish_reason=_FINISH.get(reason, reason) if isinstance(reason, str) else None,
        usage=usage,
        done=_get(payload, "generated_text") is not None,
    )


def _openai(route: str, payload: object) -> Event:
    choices = _get(payload, "choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    piece = _get(first, "text") if route == "completions" else _get(_get(first, "delta"), "content")
    reason = _get(first, "finish_reason")
    return Event(
        text=piece if isinstance(piece, str) else "",
        finish_reason=reason if isinstance(reason, str) else None,
        usage=_counts(_get(payload, "usage")),
    )
