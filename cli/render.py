"""What the CLI prints: tables and one-line texts, built from the API's objects (pure)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from rich import box
from rich.table import Table
from rich.text import Text

from cli.models import Batch, Circuit, Job
from cli.watch import TRANSITIONS, state_text

__all__ = [
    "batch_line",
    "batch_table",
    "batches_table",
    "circuits_table",
    "job_source",
    "line_errors",
    "sources_text",
    "status_line",
    "summary_table",
]

_STATUS_STYLE = {"completed": "green", "failed": "red", "cancelled": "yellow", "expired": "red"}
_STATE_STYLE = {
    "closed": "green",
    "half-open": "yellow",
    "open": "red",
    "forced_open": "magenta",
    "forced_closed": "magenta",
}


def sources_text(batch: Batch) -> str:
    """``upstream 20 · cache 5 · excerpt 3 · failed 1``."""
    parts = [f"{source} {n}" for source, n in batch.by_source().items()]
    parts.append(f"failed {batch.request_counts.failed}")
    if batch.genq.cancelled:
        parts.append(f"cancelled {batch.genq.cancelled}")
    return " · ".join(parts)


def status_line(batch: Batch, circuit: Circuit | None) -> Text:
    """The line under the progress bar: answers by source, failures, the circuit."""
    line = Text("  ")
    for source, n in batch.by_source().items():
        line.append(f"{source} ", style="dim")
        line.append(f"{n}  ", style="bold" if n else "")
    failed = batch.request_counts.failed
    line.append("failed ", style="dim")
    line.append(f"{failed}", style="bold red" if failed else "")
    line.append("  │  circuit ", style="dim")
    state = circuit.state if circuit else "closed"
    line.append(state_text(circuit), style=_STATE_STYLE.get(state, ""))
    return line


def batch_line(batch: Batch) -> str:
    """One line: id, status, progress and answers by source."""
    counts = batch.request_counts
    return f"{batch.id}  {batch.status}  {batch.done}/{counts.total}  {sources_text(batch)}"


def line_errors(batch: Batch) -> list[str]:
    """A failed batch's reasons, one line each: ``line 3: invalid_url: … (param url)``."""
    found = []
    for error in batch.line_errors:
        where = f"line {error.line}: " if error.line is not None else ""
        code = f"{error.code}: " if error.code else ""
        param = f" (param {error.param})" if error.param else ""
        found.append(f"{where}{code}{error.message}{param}")
    return found


def _when(epoch: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


def batch_table(batch: Batch) -> Table:
    """``genq batch status``: the batch as a two-column table."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    counts = batch.request_counts
    rows: list[tuple[str, str | Text]] = [
        ("batch", batch.id),
        ("status", Text(batch.status, style=_STATUS_STYLE.get(batch.status, ""))),
        ("endpoint", batch.endpoint),
        ("created", _when(batch.created_at)),
        ("done", f"{batch.done}/{counts.total}"),
        *((source, str(n)) for source, n in batch.by_source().items()),
        ("failed", str(counts.failed)),
        ("cancelled", str(batch.genq.cancelled)),
        ("output file", batch.output_file_id or "-"),
        ("error file", batch.error_file_id or "-"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def batches_table(batches: list[Batch]) -> Table:
    """``genq batch list``: newest first."""
    table = Table(title=f"{len(batches)} batch(es), newest first", box=box.SIMPLE_HEAD)
    table.add_column("batch", no_wrap=True)
    table.add_column("status")
    for column in ("done", "upstream", "cache", "excerpt", "failed"):
        table.add_column(column, justify="right")
    for batch in batches:
        sources = batch.by_source()
        table.add_row(
            batch.id,
            Text(batch.status, style=_STATUS_STYLE.get(batch.status, "")),
            f"{batch.done}/{batch.request_counts.total}",
            *(str(sources[s]) for s in ("upstream", "cache", "excerpt")),
            str(batch.request_counts.failed),
        )
    return table


def circuits_table(circuits: list[Circuit]) -> Table:
    """``genq circuits``: name, state, failures, seconds to the next probe."""
    table = Table(title=f"{len(circuits)} circuit(s)")
    table.add_column("name", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("failures", justify="right")
    table.add_column("retry_after s", justify="right")
    table.add_column("last failure", overflow="fold")
    for circuit in circuits:
        table.add_row(
            circuit.name,
            Text(circuit.state, style=_STATE_STYLE.get(circuit.state, "")),
            str(circuit.failure_count),
            f"{circuit.retry_after:.1f}",
            (circuit.last_failure or "-").partition(":")[0],  # the error's type
        )
    return table


def transitions_text(counts: Mapping[str, int]) -> str:
    """``opened 1 · half_open 1 · closed 1``, or ``no transitions``."""
    parts = [f"{k} {counts[k]}" for k in TRANSITIONS if counts.get(k)]
    return " · ".join(parts) or "no transitions"


def summary_table(
    batch: Batch,
    elapsed_s: float,
    circuits: Mapping[str, Mapping[str, int]],
    states: Mapping[str, str],
) -> Table:
    """The final table of ``genq batch run``: answers by source, failures, time, circuits."""
    total = batch.request_counts.total
    title = f"{batch.status}: {total} requests in {elapsed_s:.1f} s"
    table = Table(title=title, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("count", justify="right")
    for source, n in batch.by_source().items():
        label = source if source == "upstream" else f"{source} (degraded)"
        table.add_row(f"answered from {label}", str(n))
    table.add_row("failed", str(batch.request_counts.failed))
    table.add_row("cancelled", str(batch.genq.cancelled))
    table.add_row("total", str(total))
    for name, counts in circuits.items():
        now = states.get(name, "?")
        if not counts and now == "closed":
            continue  # used, never troubled
        table.add_row(f"circuit {name}", f"{transitions_text(counts)} · now {now}")
    return table


def job_source(job: Job) -> str:
    """``source: upstream``, or ``source: cache (degraded: circuit_open; circuit …)``."""
    result = job.result
    if result is None:
        return "source: -"
    if not result.degraded:
        return f"source: {result.source}"
    why = [result.fallback_reason or "degraded"]
    if result.circuit:
        why.append(f"circuit {result.circuit}")
    if result.retry_after:
        why.append(f"retry after {result.retry_after:.1f} s")
    return f"source: {result.source} (degraded: {'; '.join(why)})"
