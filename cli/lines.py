"""A batch input file as the CLI sends it: OpenAI request lines, or one prompt per line.

Two shapes are read, line by line:

- OpenAI batch lines, ``{"custom_id", "method", "url", "body"}``, sent byte for byte;
- prompt lines, ``{"prompt": "…"}`` with optional ``context``, ``model``,
  ``max_tokens`` (and the other body fields genq takes), converted to request lines of
  the batch's endpoint with ``custom_id`` ``line-<n>`` (``n``: the line number in the
  file) unless the line gives its own ``custom_id``.

The endpoint is ``--endpoint`` when given, else the first OpenAI line's ``url``, else
``/v1/completions``. Nothing is validated here: a line that is neither shape is sent as
it is, and the API reports it with its line number, which the conversion keeps (blank
lines stay blank).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHAT", "COMPLETIONS", "PreparedInput", "normalize_endpoint", "prepare_input"]

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
_ALIASES = {"completions": COMPLETIONS, "chat": CHAT, "chat/completions": CHAT}
_OPENAI_KEYS = frozenset({"method", "url", "body"})


@dataclass
class PreparedInput:
    """What is uploaded: the endpoint, the file's bytes, and the custom ids in order."""

    endpoint: str
    data: bytes
    custom_ids: list[str] = field(default_factory=list)
    converted: int = 0
    """How many prompt lines were turned into request lines."""

    @property
    def count(self) -> int:
        return len(self.custom_ids)


def normalize_endpoint(value: str) -> str:
    """``completions`` / ``chat`` / a ``/v1/...`` path, as the API's endpoint string."""
    text = value.strip()
    endpoint = _ALIASES.get(text.lower().removeprefix("/v1/").strip("/"), text)
    if endpoint not in (COMPLETIONS, CHAT):
        raise ValueError(f"endpoint must be {COMPLETIONS} or {CHAT} (or completions/chat)")
    return endpoint


def _parse(raw: str) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _is_openai(line: dict[str, Any]) -> bool:
    return bool(_OPENAI_KEYS & line.keys())


def _is_prompt(line: dict[str, Any]) -> bool:
    return "prompt" in line and not _is_openai(line)


def infer_endpoint(lines: list[str]) -> str:
    """The first OpenAI line's ``url``, else ``/v1/completions``."""
    for raw in lines:
        parsed = _parse(raw)
        if parsed is not None and _is_openai(parsed):
            url = parsed.get("url")
            return url if isinstance(url, str) and url else COMPLETIONS
    return COMPLETIONS


def convert_prompt_line(line: dict[str, Any], number: int, endpoint: str) -> dict[str, Any]:
    """A prompt line as an OpenAI request line of ``endpoint``."""
    body = {k: v for k, v in line.items() if k != "custom_id"}
    if endpoint == CHAT:
        prompt = body.pop("prompt")
        body = {"messages": [{"role": "user", "content": prompt}], **body}
    custom_id = line.get("custom_id") or f"line-{number}"
    return {"custom_id": str(custom_id), "method": "POST", "url": endpoint, "body": body}


def prepare_input(text: str, endpoint: str | None = None) -> PreparedInput:
    """The file to upload for ``text`` (a JSONL file's content); see the module doc."""
    lines = text.splitlines()
    chosen = normalize_endpoint(endpoint) if endpoint else infer_endpoint(lines)
    prepared = PreparedInput(endpoint=chosen, data=b"")
    out: list[str] = []
    for number, raw in enumerate(lines, start=1):
        parsed = _parse(raw) if raw.strip() else None
        if parsed is not None and _is_prompt(parsed):
            converted = convert_prompt_line(parsed, number, chosen)
            out.append(json.dumps(converted, ensure_ascii=False))
            prepared.custom_ids.append(converted["custom_id"])
            prepared.converted += 1
            continue
        out.append(raw)
        if parsed is not None and isinstance(parsed.get("custom_id"), str):
            prepared.custom_ids.append(parsed["custom_id"])
    prepared.data = ("\n".join(out) + "\n").encode("utf-8") if out else b""
    return prepared
