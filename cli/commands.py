"""``genq submit`` and ``genq circuits [list|open|close|reset NAME]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from cli.context import AsJson, api_errors, client_for, print_json, state
from cli.jobs import SubmitOptions, submit_job
from cli.render import circuits_table

__all__ = ["circuits_app", "submit"]

circuits_app = typer.Typer(help="The shared circuit breakers: list them, or force one (admin).")


def submit(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(metavar="PROMPT")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the answer and print it")] = False,
    context_file: Annotated[
        list[Path] | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            metavar="FILE",
            help="A text document for excerpts (repeatable)",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(metavar="MODEL", help="Model (default: the server's)")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, max=8192, metavar="N", help="Most tokens to generate")
    ] = None,
    fallback: Annotated[
        Literal["auto", "none"] | None,
        typer.Option(
            metavar="auto|none", help="none: fail rather than answer degraded (default: auto)"
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="How long --wait waits")
    ] = 120.0,
    as_json: AsJson = False,
) -> None:
    """Submit one job (POST /v1/jobs) and print its id; --wait prints the answer."""
    options = SubmitOptions(
        prompt,
        wait,
        context_file or [],
        model,
        max_tokens,
        fallback,
        timeout_s=timeout,
        as_json=as_json,
    )
    client = client_for(ctx)
    with api_errors(ctx):
        code = submit_job(client, options, state(ctx).out, state(ctx).err)
    raise typer.Exit(code)


@circuits_app.callback(invoke_without_command=True)
def circuits(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List the circuits (name, state, failures, seconds to the next probe)."""
    if ctx.invoked_subcommand is None:
        circuits_list(ctx, as_json)


@circuits_app.command("list")
def circuits_list(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List the circuits."""
    client = client_for(ctx)
    with api_errors(ctx):
        found = client.circuits()
    if as_json:
        print_json(ctx, [circuit.as_json() for circuit in found])
        return
    state(ctx).out.print(circuits_table(found))


def _control(ctx: typer.Context, name: str, action: str, as_json: bool) -> None:
    client = client_for(ctx)
    with api_errors(ctx):
        circuit = client.control_circuit(name, action)
    if as_json:
        print_json(ctx, circuit.as_json())
        return
    state(ctx).out.print(f"circuit {circuit.name}: {circuit.state}", markup=False)


Name = Annotated[str, typer.Argument(metavar="NAME", help="As `genq circuits` lists it")]


@circuits_app.command("open", short_help="Force a circuit open: fallbacks answer (admin key).")
def circuits_open(ctx: typer.Context, name: Name, as_json: AsJson = False) -> None:
    """Force a circuit open: its requests are answered from fallbacks (admin key)."""
    _control(ctx, name, "open", as_json)


@circuits_app.command(
    "close", short_help="Force a circuit closed: it admits everything (admin key)."
)
def circuits_close(ctx: typer.Context, name: Name, as_json: AsJson = False) -> None:
    """Force a circuit closed: the breaker admits everything, counts nothing (admin key)."""
    _control(ctx, name, "close", as_json)


@circuits_app.command("reset")
def circuits_reset(ctx: typer.Context, name: Name, as_json: AsJson = False) -> None:
    """Put a circuit back to closed with zero failures (admin key)."""
    _control(ctx, name, "reset", as_json)
