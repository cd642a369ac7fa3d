"""A batch's results: its output lines (answers) and error lines, read, ordered, written."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cli.client import GenqClient
from cli.models import Batch

__all__ = ["circuits_named", "fetch_results", "order_lines", "write_lines"]


def fetch_results(client: GenqClient, batch: Batch) -> tuple[list[str], list[str]]:
    """The output lines and the error lines written so far."""
    output = client.file_lines(batch.output_file_id) if batch.output_file_id else []
    errors = client.file_lines(batch.error_file_id) if batch.error_file_id else []
    return output, errors


def _decode(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def order_lines(lines: Iterable[str], custom_ids: list[str]) -> list[str]:
    """``lines`` in the order of their ``custom_id`` in the input; unknown ones last."""
    rank = {custom_id: index for index, custom_id in enumerate(custom_ids)}
    last = len(rank)
    return sorted(lines, key=lambda line: rank.get(str(_decode(line).get("custom_id")), last))


def genq_of(line: str) -> dict[str, Any]:
    """The ``genq`` object of an output line's body (empty for an error line)."""
    response = _decode(line).get("response") or {}
    body = response.get("body") if isinstance(response, dict) else None
    found = body.get("genq") if isinstance(body, dict) else None
    return found if isinstance(found, dict) else {}


def circuits_named(lines: Iterable[str]) -> set[str]:
    """The circuits that refused requests, as the output lines' ``genq.circuit`` name them."""
    return {str(c) for line in lines if (c := genq_of(line).get("circuit"))}


def write_lines(lines: list[str], path: Path | None) -> None:
    """Write JSONL to ``path``, or to stdout when None."""
    text = "".join(line + "\n" for line in lines)
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
