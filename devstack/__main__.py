"""``python -m devstack``: run the local stack, demo it, or make sure redis-server exists."""

from __future__ import annotations

from pathlib import Path

import typer

from devstack.demo import run_demo
from devstack.lockfile import check_locks
from devstack.redis import ensure_redis_server
from devstack.stack import plan_stack, run_stack

cli = typer.Typer(add_completion=False, help="genq's local stack (development only).")


@cli.command()
def run(
    banner: bool = typer.Option(True, help="Once ready, print the URLs, the key and the exports."),
) -> None:
    """Start redis, the simulator, a worker, the API and Flower; Ctrl-C stops them all."""
    raise typer.Exit(run_stack(plan_stack(), banner=banner))


@cli.command()
def demo(
    timeout_s: float = typer.Option(90.0, help="Longest wait for each genq command it runs."),
) -> None:
    """Start the stack, run batches through the genq CLI with an outage in the middle, stop."""
    raise typer.Exit(run_demo(timeout_s))


@cli.command("ensure-redis")
def ensure_redis() -> None:
    """Find or install a redis-server >= 6.2 and print its path."""
    print(ensure_redis_server())


@cli.command("check-lock")
def check_lock() -> None:
    """Fail when pyproject.toml and the locks disagree (`make lock` mends it)."""
    problems = check_locks(Path.cwd())
    for problem in problems:
        print(problem)
    if problems:
        print("pyproject.toml and the lock disagree: run `make lock`, then `make test`.")
        raise typer.Exit(1)
    print("lock: in step with pyproject.toml")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
