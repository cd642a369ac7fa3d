"""The ``genq`` command: batches, jobs and circuits through genq's HTTP API.

Settings come from ``GENQ_API_URL`` and ``GENQ_API_KEY`` (``--api-url`` / ``--api-key``
before the command override them). Any error the API answers is printed as one line on
stderr and the command exits 1; usage errors exit 2; ``batch run`` exits 130 when
Ctrl-C left its batch running. Every command that prints an object takes ``--json``.

Help is click's plain layout (``rich_markup_mode=None``): it fits 80 columns and shows
flags bare, where typer's rich panels print ``<bool>`` beside each flag and fold long
option names past 80 columns.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from cli.batch_commands import batch_app
from cli.commands import circuits_app, submit
from cli.context import State

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,  # locals may hold the key
    help="genq's command line: run OpenAI-style batches, submit jobs, steer circuits.",
)
app.add_typer(batch_app, name="batch")
app.command("submit", short_help="Submit one job; print its id, or its answer (--wait).")(submit)
app.add_typer(circuits_app, name="circuits")


def _version(shown: bool) -> None:
    if shown:
        try:
            found = version("genq")
        except PackageNotFoundError:  # run from a source tree that was never installed
            found = "unknown (not installed)"
        print(f"genq {found}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    api_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="genq's API (default: $GENQ_API_URL, else http://127.0.0.1:8000)"
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(metavar="KEY", help="Bearer key (default: $GENQ_API_KEY)"),
    ] = None,
    _: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print genq's version and exit"
        ),
    ] = False,
) -> None:
    """genq's command line."""
    ctx.obj = State(api_url, api_key)


def main() -> None:
    """The ``genq`` entry point."""
    app()


if __name__ == "__main__":
    main()
