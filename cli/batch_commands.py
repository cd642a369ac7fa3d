"""``genq batch run|status|results|cancel|list``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli.batch import RunOptions, default_output, run_batch
from cli.context import AsJson, api_errors, client_for, fail, print_json, state
from cli.lines import InputError, normalize_endpoint
from cli.render import batch_line, batch_table, batches_table, line_errors
from cli.results import fetch_results, write_lines

__all__ = ["batch_app"]

batch_app = typer.Typer(no_args_is_help=True, help="OpenAI-compatible batches (/v1/batches).")

BatchId = Annotated[str, typer.Argument(metavar="BATCH_ID")]


def _metadata(pairs: list[str]) -> dict[str, str] | None:
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--metadata")
        found[key] = value
    return found or None


@batch_app.command("run", short_help="Run FILE as a batch with a progress bar; write results.")
def batch_run(
    ctx: typer.Context,
    input_file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            metavar="FILE",
            help="JSONL: OpenAI batch lines, or {'prompt': ...} lines",
        ),
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FILE",
            help="Results file, '-' for stdout (default: FILE.results.jsonl)",
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="/v1/completions or /v1/chat/completions (default: from the lines)",
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option(min=0.05, metavar="SECONDS", help="Time between polls")
    ] = 0.5,
    cancel_on_interrupt: Annotated[
        bool | None,
        typer.Option(
            "--cancel-on-interrupt/--no-cancel-on-interrupt",
            help="On Ctrl-C, cancel the batch / leave it running (default: ask)",
        ),
    ] = None,
    metadata: Annotated[
        list[str] | None, typer.Option(metavar="KEY=VALUE", help="Batch metadata, repeatable")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the final batch object as JSON")
    ] = False,
) -> None:
    """Upload FILE, run it as a batch with a live progress bar, write the results.

    Exits 0 when every request got an answer, 1 when any failed or the batch did not
    complete, 130 when Ctrl-C left the batch running. A line that is neither a prompt
    line nor an OpenAI request line (a misspelled "prompt") stops it before anything
    is sent. With --json the progress goes to stderr and the batch to stdout.
    """
    if endpoint is not None:
        try:
            endpoint = normalize_endpoint(endpoint)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--endpoint") from None
    if as_json and output == "-":
        raise typer.BadParameter("--json prints the batch on stdout: write results to a file")
    target = None if output == "-" else Path(output) if output else default_output(input_file)
    options = RunOptions(
        input_file, target, endpoint, interval, cancel_on_interrupt, _metadata(metadata or [])
    )
    client = client_for(ctx)
    io = state(ctx)
    with api_errors(ctx):
        try:
            run = run_batch(client, options, io.err if target is None or as_json else io.out)
        except InputError as exc:
            for problem in exc.problems:
                io.err.print(f"{input_file}: {problem}", markup=False, soft_wrap=True)
            raise fail(ctx, f"{input_file}: nothing was sent; mend these lines") from None
    if as_json:
        print_json(ctx, run.batch.as_json())
    raise typer.Exit(run.code)


@batch_app.command("status")
def batch_status(ctx: typer.Context, batch_id: BatchId, as_json: AsJson = False) -> None:
    """A batch's status, progress and answers by source."""
    client = client_for(ctx)
    with api_errors(ctx):
        batch = client.batch(batch_id)
    if as_json:
        print_json(ctx, batch.as_json())
        return
    out = state(ctx).out
    out.print(batch_table(batch))
    for line in line_errors(batch):
        out.print(f"  {line}", markup=False, soft_wrap=True)


@batch_app.command("results", short_help="Write a batch's output lines, then its error lines.")
def batch_results(
    ctx: typer.Context,
    batch_id: BatchId,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", metavar="FILE", help="File to write (default: stdout)"),
    ] = None,
) -> None:
    """Write a batch's output lines, then its error lines (what is there so far)."""
    client = client_for(ctx)
    with api_errors(ctx):
        batch = client.batch(batch_id)
        answers, errors = fetch_results(client, batch)
        write_lines(answers + errors, output)
    where = str(output) if output else "stdout"
    counts = f"{len(answers)} answers, {len(errors)} errors"
    state(ctx).err.print(f"{batch.id} ({batch.status}): {counts} → {where}", markup=False)


@batch_app.command("cancel", short_help="Cancel a batch: queued requests will not run.")
def batch_cancel(
    ctx: typer.Context,
    batch_id: BatchId,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the batch has stopped")] = False,
    as_json: AsJson = False,
) -> None:
    """Cancel a batch: queued requests will not run, running ones finish."""
    client = client_for(ctx)
    with api_errors(ctx):
        batch = client.cancel_batch(batch_id)
        while wait and not batch.final:
            state(ctx).err.print(batch_line(batch), markup=False)
            time.sleep(0.5)
            batch = client.batch(batch_id)
    if as_json:
        print_json(ctx, batch.as_json())
        return
    state(ctx).out.print(batch_line(batch), markup=False)


@batch_app.command("list")
def batch_list(
    ctx: typer.Context,
    limit: Annotated[
        int, typer.Option(min=1, max=100, metavar="N", help="How many, newest first")
    ] = 20,
    as_json: AsJson = False,
) -> None:
    """This key's batches, newest first."""
    client = client_for(ctx)
    with api_errors(ctx):
        batches = client.batches(limit)
    if as_json:
        print_json(ctx, [batch.as_json() for batch in batches])
        return
    state(ctx).out.print(batches_table(batches))
