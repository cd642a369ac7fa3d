"""A batch input file as the CLI sends it: OpenAI request lines, or one prompt per line.

Two shapes are read, line by line:

- OpenAI batch lines, ``{"custom_id", "method", "url", "body"}``, sent byte for byte;
- prompt lines, ``{"prompt": "…"}`` with optional ``context``, ``model``,
  ``max_tokens`` (and the other body fields genq takes), converted to request lines of
  the batch's endpoint with ``custom_id`` ``line-<n>`` (``n``: the line number in the
  file) unless the line gives its own ``custom_id``.

The endpoint is ``--endpoint`` when given, else the first OpenAI line's ``url``, else
``/v1/completions``. Lines are the API's to validate, with their line numbers, which the
conversion keeps (blank lines stay blank), with one exception: a JSON object of neither
shape is refused here, before anything is sent, naming its unknown fields and the field
each may be a typo of (``{"promt": "hi"}``: unknown field "promt", did you mean
"prompt"?). Sent, it would read as an OpenAI line missing its ``custom_id``.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "InputError",
    "PreparedInput",
    "normalize_endpoint",
    "prepare_input",
]

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
_ALIASES = {"completions": COMPLETIONS, "chat": CHAT, "chat/completions": CHAT}
_OPENAI_KEYS = frozenset({"method", "url", "body"})
#: Fields a line is recognised by, each the likely intent of a misspelled key.
_SHAPE_KEYS = ("prompt", "custom_id", "method", "url", "body")
#: Problems listed at most, of a file with many bad lines.
MAX_PROBLEMS = 10


class InputError(ValueError):
    """Raised when lines of a batch input file are of neither shape; nothing is sent."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


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


def shape_problem(line: dict[str, Any]) -> str | None:
    """Why an object is neither a prompt line nor an OpenAI request line, or None: its
    keys that look like a misspelled ``prompt``, ``method``, …, else what it lacks."""
    if _is_prompt(line) or _is_openai(line):
        return None
    typos = []
    for key in line:
        close = difflib.get_close_matches(key, _SHAPE_KEYS, n=1, cutoff=0.6)
        if key not in _SHAPE_KEYS and close:
            typos.append(f'unknown field "{key}" (did you mean "{close[0]}"?)')
    if typos:
        return "; ".join(typos)
    return 'no "prompt" (a prompt line), nor "method", "url" and "body" (an OpenAI request line)'


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
    """The file to upload for ``text`` (a JSONL file's content); see the module doc.
    Raises InputError naming each line of neither shape (at most MAX_PROBLEMS)."""
    lines = text.splitlines()
    chosen = normalize_endpoint(endpoint) if endpoint else infer_endpoint(lines)
    prepared = PreparedInput(endpoint=chosen, data=b"")
    out: list[str] = []
    problems: list[str] = []
    for number, raw in enumerate(lines, start=1):
        parsed = _parse(raw) if raw.strip() else None
        problem = shape_problem(parsed) if parsed is not None else None
        if problem is not None:
            problems.append(f"line {number}: {problem}")
            continue
        if parsed is not None and _is_prompt(parsed):
            converted = convert_prompt_line(parsed, number, chosen)
            out.append(json.dumps(converted, ensure_ascii=False))
            prepared.custom_ids.append(converted["custom_id"])
            prepared.converted += 1
            continue
        out.append(raw)
        if parsed is not None and isinstance(parsed.get("custom_id"), str):
            prepared.custom_ids.append(parsed["custom_id"])
    if problems:
        more = len(problems) - MAX_PROBLEMS
        shown = problems[:MAX_PROBLEMS] + ([f"and {more} more such lines"] if more > 0 else [])
        raise InputError(shown)
    prepared.data = ("\n".join(out) + "\n").encode("utf-8") if out else b""
    return prepared
