"""The ``genq`` command: batches, jobs and circuits through genq's HTTP API.

Settings come from ``GENQ_API_URL`` and ``GENQ_API_KEY`` (``--api-url`` / ``--api-key``
before the command override them). Any error the API answers is printed as one line on
stderr and the command exits 1; usage errors exit 2; ``batch run`` exits 130 when
Ctrl-C left its batch running.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.batch_commands import batch_app
from cli.commands import circuits_app, submit
from cli.context import State

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,  # locals may hold the key
    help="genq's command line: run OpenAI-style batches, submit jobs, steer circuits.",
)
app.add_typer(batch_app, name="batch")
app.command("submit")(submit)
app.add_typer(circuits_app, name="circuits")


@app.callback()
def root(
    ctx: typer.Context,
    api_url: Annotated[
        str | None,
        typer.Option(help="genq's API (default: $GENQ_API_URL, else http://127.0.0.1:8000)"),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Bearer key (default: $GENQ_API_KEY)", show_default=False)
    ] = None,
) -> None:
    """genq's command line."""
    ctx.obj = State(api_url, api_key)


def main() -> None:
    """The ``genq`` entry point."""
    app()


if __name__ == "__main__":
    main()
