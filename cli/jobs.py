"""``genq submit``: one job through ``POST /v1/jobs``, optionally waited for."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from cli.client import ApiError, GenqClient
from cli.models import Job
from cli.render import job_source

__all__ = ["SubmitOptions", "context_doc", "job_body", "submit_job"]


@dataclass(frozen=True)
class SubmitOptions:
    """What ``genq submit`` was asked to do."""

    prompt: str
    wait: bool = False
    context_files: list[Path] = field(default_factory=list)
    model: str | None = None
    max_tokens: int | None = None
    fallback: str | None = None
    timeout_s: float = 120.0
    interval_s: float = 0.5
    as_json: bool = False
    """Print the job object as JSON (the final one with ``wait``) instead of its text."""


def context_doc(path: Path) -> dict[str, str]:
    """A text file as a context document: id and title the file's name."""
    return {"id": path.name, "title": path.name, "text": path.read_text(encoding="utf-8")}


def job_body(options: SubmitOptions) -> dict[str, Any]:
    """The ``POST /v1/jobs`` body."""
    body: dict[str, Any] = {"prompt": options.prompt}
    if options.model:
        body["model"] = options.model
    if options.max_tokens is not None:
        body["params"] = {"max_new_tokens": options.max_tokens}
    if options.context_files:
        body["context"] = [context_doc(p) for p in options.context_files]
    if options.fallback:
        body["fallback"] = options.fallback
    return body


def wait_for(client: GenqClient, job: Job, timeout_s: float, interval_s: float) -> Job:
    """Poll until the job is final; raises ApiError when ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while not job.final:
        if time.monotonic() > deadline:
            raise ApiError(f"job {job.id} is still {job.status} after {timeout_s:g} s")
        time.sleep(interval_s)
        job = client.job(job.id)
    return job


def submit_job(client: GenqClient, options: SubmitOptions, out: Console, err: Console) -> int:
    """Submit and print the id; with ``wait``, the answer on stdout, the id and where the
    answer came from on stderr (so stdout holds only the answer). With ``as_json``,
    stdout holds the job object instead. Exits 1 when the waited-for job failed."""
    job = client.submit(job_body(options), f"genq-cli-{uuid.uuid4().hex}")
    if not options.wait:
        if options.as_json:
            out.print_json(json.dumps(job.as_json(), ensure_ascii=False))
        else:
            out.print(job.id, markup=False, highlight=False)
        return 0
    err.print(f"[dim]job {job.id}[/dim]", highlight=False)
    job = wait_for(client, job, options.timeout_s, options.interval_s)
    if options.as_json:
        out.print_json(json.dumps(job.as_json(), ensure_ascii=False))
    if job.error is not None or job.result is None:
        message = job.error.message if job.error else "no result"
        kind = job.error.type if job.error else "error"
        retry = job.error.retry_after if job.error else None
        hint = f" (retry after {retry:.1f} s)" if retry else ""
        err.print(f"[red]job failed: {kind}: {escape(message)}{hint}[/red]", soft_wrap=True)
        return 1
    if options.as_json:
        return 0
    out.print(job.result.text, markup=False, highlight=False, emoji=False, soft_wrap=True)
    style = "yellow" if job.result.degraded else "dim"
    err.print(f"[{style}]{job_source(job)}[/{style}]", highlight=False)
    for citation in job.result.citations:
        err.print(f"[dim]  cites {citation.get('id')} {citation.get('title') or ''}[/dim]")
    return 0
