"""``genq batch run``: upload, create, follow with a live progress bar, write the results.

The run polls the batch and ``/v1/circuits`` every ``interval_s``; the bar shows the
requests done, the answers by source, the failures and the state of the circuit the
batch meets (``cli.watch``); circuit changes are printed above it as they are seen. On
Ctrl-C it asks whether to cancel the batch (or does what ``--[no-]cancel-on-interrupt``
says): yes cancels it, waits for it to stop and still writes the partial results; no
leaves it running and says how to pick it up again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from cli.client import ApiError, GenqClient
from cli.lines import prepare_input
from cli.models import Batch
from cli.render import line_errors, status_line, summary_table
from cli.results import circuits_named, fetch_results, order_lines, write_lines
from cli.watch import CircuitWatch

__all__ = ["EXIT_DETACHED", "RunOptions", "RunResult", "default_output", "run_batch"]

#: Exit status when Ctrl-C left the batch running (the shell's code for SIGINT).
EXIT_DETACHED = 130
#: How long the API may stay unreachable before the run gives up following the batch.
MAX_API_OUTAGE_S = 60.0
#: While no output line has named a circuit, the output is read at most this often, and
#: at most this many times (degraded answers of ``cache: prefer`` name none).
LEARN_EVERY_S = 2.0
LEARN_TRIES = 3


@dataclass(frozen=True)
class RunOptions:
    """What ``genq batch run`` was asked to do."""

    input_path: Path
    output: Path | None
    """Where the results go; None: stdout."""
    endpoint: str | None = None
    interval_s: float = 0.5
    cancel_on_interrupt: bool | None = None
    """None: ask on Ctrl-C."""
    metadata: dict[str, str] | None = None


@dataclass(frozen=True)
class RunResult:
    """How ``genq batch run`` ended: its exit status and the batch as last seen."""

    code: int
    """0: every request answered; 1: not; EXIT_DETACHED: left running after Ctrl-C."""
    batch: Batch


def default_output(input_path: Path) -> Path:
    """``prompts.jsonl`` → ``prompts.results.jsonl``, next to the input."""
    return input_path.with_name(f"{input_path.stem}.results.jsonl")


class _BatchProgress(Progress):
    """The bar, and under it a line of answers by source and the circuit's state."""

    def __init__(self, console: Console) -> None:
        self.status = Text("")  # read by get_renderables, which the constructor calls
        super().__init__(
            SpinnerColumn(),
            TextColumn("{task.description:<11}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            expand=True,
        )

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield self.status


class Follower:
    """Polls one batch until it is final, drawing the progress bar."""

    def __init__(self, client: GenqClient, console: Console, interval_s: float) -> None:
        self.client = client
        self.console = console
        self.interval_s = interval_s
        self.watch = CircuitWatch()
        self.started = time.monotonic()
        self._learned_at = 0.0
        self._learn_tries = LEARN_TRIES

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def follow(self, batch: Batch) -> Batch:
        """Poll until the batch is final, drawing the bar; returns the final batch."""
        with _BatchProgress(console=self.console) as progress:
            task = progress.add_task(batch.status, total=batch.request_counts.total or None)
            while True:
                self._circuits(progress)
                self._learn(batch)
                progress.status = status_line(batch, self.watch.shown())
                progress.update(
                    task,
                    description=batch.status,
                    total=batch.request_counts.total or None,
                    completed=batch.done,
                )
                if batch.final:
                    return batch
                time.sleep(self.interval_s)
                batch = self._poll(batch, progress)

    def _poll(self, batch: Batch, progress: _BatchProgress) -> Batch:
        """The batch again; while the API is unreachable (or answers 5xx), it keeps
        trying for up to ``MAX_API_OUTAGE_S``, saying so once."""
        since = time.monotonic()
        while True:
            try:
                return self.client.batch(batch.id)
            except ApiError as exc:
                if not exc.transient or time.monotonic() - since > MAX_API_OUTAGE_S:
                    raise
                if progress.status.plain != exc.message:  # said once, not every second
                    progress.console.print(f"{exc.message}; still trying", style="yellow")
                    progress.status = Text(exc.message, style="yellow")
                time.sleep(max(self.interval_s, 1.0))

    def _circuits(self, progress: Progress) -> None:
        try:
            circuits = self.client.circuits()
        except ApiError:
            return  # the bar keeps the last state seen
        for event in self.watch.observe(circuits):
            line = f"[dim]{self.elapsed():6.1f} s[/dim]  {escape(event)}"
            progress.console.print(line, soft_wrap=True)

    def _learn(self, batch: Batch) -> None:
        """Read which circuit refused requests from the output, until one line says so."""
        sources = batch.by_source()
        degraded = sources["cache"] + sources["excerpt"]
        now = time.monotonic()
        if not self._learn_tries or not degraded or now - self._learned_at < LEARN_EVERY_S:
            return
        self._learned_at = now
        self._learn_tries -= 1
        try:
            output, _ = fetch_results(self.client, batch)
        except ApiError:
            return
        names = circuits_named(output)
        self.watch.named(names)
        if names:
            self._learn_tries = 0


def _wants_cancel(choice: bool | None) -> bool:
    if choice is not None:
        return choice
    try:
        return typer.confirm("cancel the batch?", default=False)
    except typer.Abort:  # a second Ctrl-C, or no terminal to ask on
        return False


def _detached(console: Console, batch_id: str) -> int:
    console.print(f"detached: batch {batch_id} keeps running.")
    console.print(f"  genq batch status {batch_id}")
    console.print(f"  genq batch results {batch_id} -o FILE")
    return EXIT_DETACHED


def _start(client: GenqClient, options: RunOptions, console: Console) -> tuple[Batch, list[str]]:
    prepared = prepare_input(options.input_path.read_text(encoding="utf-8"), options.endpoint)
    key = f"genq-cli-{uuid.uuid4().hex}"  # one per run: a retried POST finds its first result
    file_id = client.upload(options.input_path.name, prepared.data, key)
    batch = client.create_batch(file_id, prepared.endpoint, key, options.metadata)
    converted = f", {prepared.converted} prompt lines converted" if prepared.converted else ""
    total = batch.request_counts.total or prepared.count  # 0 when validation failed
    console.print(
        f"batch [bold]{batch.id}[/bold]: {total} requests "
        f"to {batch.endpoint}{converted} (input file {file_id})",
        soft_wrap=True,
    )
    return batch, prepared.custom_ids


def run_batch(client: GenqClient, options: RunOptions, console: Console) -> RunResult:
    """Run the batch of ``options.input_path``: how it ended, and the batch. Raises
    InputError (nothing sent) when lines of the file are of neither shape."""
    batch, custom_ids = _start(client, options, console)
    if batch.status == "failed":
        console.print(f"[red]batch {batch.id} failed validation; nothing ran:[/red]")
        for line in line_errors(batch):
            console.print(f"  {line}", markup=False, soft_wrap=True)
        return RunResult(1, batch)
    follower = Follower(client, console, options.interval_s)
    try:
        batch = follower.follow(batch)
    except KeyboardInterrupt:
        if not _wants_cancel(options.cancel_on_interrupt):
            return RunResult(_detached(console, batch.id), batch)
        console.print(f"cancelling {batch.id}: running requests finish, queued ones will not run")
        batch = client.cancel_batch(batch.id)
        try:
            batch = follower.follow(client.batch(batch.id))
        except KeyboardInterrupt:
            return RunResult(_detached(console, batch.id), batch)
    return RunResult(_finish(client, options, console, follower, batch, custom_ids), batch)


def _finish(
    client: GenqClient,
    options: RunOptions,
    console: Console,
    follower: Follower,
    batch: Batch,
    custom_ids: list[str],
) -> int:
    output, errors = fetch_results(client, batch)
    follower.watch.named(circuits_named(output))
    write_lines(order_lines(output + errors, custom_ids), options.output)
    states = {name: c.state for name, c in follower.watch.latest.items()}
    console.print(summary_table(batch, follower.elapsed(), follower.watch.transitions(), states))
    where = str(options.output) if options.output else "stdout"
    console.print(f"{len(output)} answers and {len(errors)} errors written to {where}")
    ok = batch.status == "completed" and batch.request_counts.failed == 0
    if not ok:
        console.print(f"[red]not every request was answered (batch {batch.status})[/red]")
    return 0 if ok else 1
