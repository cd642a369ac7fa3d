"""``genq submit`` and ``genq circuits [list|open|close|reset NAME]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from cli.context import api_errors, client_for, state
from cli.jobs import SubmitOptions, submit_job
from cli.render import circuits_table

__all__ = ["circuits_app", "submit"]

circuits_app = typer.Typer(help="The shared circuit breakers: list them, or force one (admin).")


def submit(
    ctx: typer.Context,
    prompt: str,
    wait: Annotated[bool, typer.Option(help="Wait for the answer and print it")] = False,
    context_file: Annotated[
        list[Path] | None,
        typer.Option(exists=True, dir_okay=False, help="A text document for excerpts (repeatable)"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model (default: the server's)")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, max=8192)] = None,
    fallback: Annotated[
        Literal["auto", "none"] | None,
        typer.Option(help="none: fail rather than answer degraded (default: auto)"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits")] = 120.0,
) -> None:
    """Submit one job (POST /v1/jobs) and print its id; --wait prints the answer."""
    options = SubmitOptions(
        prompt, wait, context_file or [], model, max_tokens, fallback, timeout_s=timeout
    )
    client = client_for(ctx)
    with api_errors(ctx):
        code = submit_job(client, options, state(ctx).out, state(ctx).err)
    raise typer.Exit(code)


@circuits_app.callback(invoke_without_command=True)
def circuits(ctx: typer.Context) -> None:
    """List the circuits (name, state, failures, seconds to the next probe)."""
    if ctx.invoked_subcommand is None:
        circuits_list(ctx)


@circuits_app.command("list")
def circuits_list(ctx: typer.Context) -> None:
    """List the circuits."""
    client = client_for(ctx)
    with api_errors(ctx):
        found = client.circuits()
    state(ctx).out.print(circuits_table(found))


def _control(ctx: typer.Context, name: str, action: str) -> None:
    client = client_for(ctx)
    with api_errors(ctx):
        circuit = client.control_circuit(name, action)
    state(ctx).out.print(f"circuit {circuit.name}: {circuit.state}", markup=False)


@circuits_app.command("open")
def circuits_open(ctx: typer.Context, name: str) -> None:
    """Force a circuit open: its requests are answered from fallbacks (admin key)."""
    _control(ctx, name, "open")


@circuits_app.command("close")
def circuits_close(ctx: typer.Context, name: str) -> None:
    """Force a circuit closed: the breaker admits everything, counts nothing (admin key)."""
    _control(ctx, name, "close")


@circuits_app.command("reset")
def circuits_reset(ctx: typer.Context, name: str) -> None:
    """Put a circuit back to closed with zero failures (admin key)."""
    _control(ctx, name, "reset")
