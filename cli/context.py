"""What every command shares: the invocation's options and consoles, the client, and
how errors end a command (one line on stderr; exit 1, or 2 for a usage error)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from cli.client import ApiError, GenqClient
from cli.settings import CliSettings

__all__ = ["AsJson", "State", "api_errors", "client_for", "print_json", "state"]

#: ``--json`` on every command that prints an object: that object, as the API sent it.
AsJson = Annotated[bool, typer.Option("--json", help="Print the object(s) as JSON")]


@dataclass
class State:
    """One invocation's overrides and consoles (made per run: they read COLUMNS and the
    streams of the moment)."""

    api_url: str | None = None
    api_key: str | None = None
    out: Console = field(default_factory=lambda: Console(highlight=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))


def state(ctx: typer.Context) -> State:
    """This invocation's state (set by the root callback)."""
    found = ctx.find_root().obj
    return found if isinstance(found, State) else State()


def print_json(ctx: typer.Context, value: Any) -> None:
    """``--json``: the value on stdout as JSON (indented; colours only on a terminal)."""
    state(ctx).out.print_json(json.dumps(value, ensure_ascii=False))


def fail(ctx: typer.Context, message: str, code: int = 1) -> typer.Exit:
    """Print ``genq: <message>`` on stderr; the exit to raise."""
    # soft_wrap: the message stays one line however narrow the terminal.
    state(ctx).err.print(f"[red]genq:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def client_for(ctx: typer.Context) -> GenqClient:
    """A client with the settings, or a usage error (exit 2) naming what is missing."""
    given = state(ctx)
    try:
        settings = CliSettings.load(given.api_url, given.api_key)
    except ValidationError as exc:
        reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise fail(ctx, reason, 2) from None
    if settings.api_key is None:
        raise fail(ctx, "no API key: set GENQ_API_KEY or pass --api-key", 2)
    return GenqClient(settings.api_url, settings.api_key.get_secret_value())


@contextlib.contextmanager
def api_errors(ctx: typer.Context) -> Iterator[None]:
    """An API error or an unreadable file: one line on stderr, exit 1."""
    try:
        yield
    except ApiError as exc:
        raise fail(ctx, exc.message) from None
    except OSError as exc:
        raise fail(ctx, f"{exc.filename or ''}: {exc.strerror or exc}") from None
