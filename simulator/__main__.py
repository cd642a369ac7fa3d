"""``python -m simulator``: serve the upstream simulator (not a model) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence

from simulator.server import SimulatorServer


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--host``/``--port``, serve, and return 0 once asked to stop."""
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="genq upstream simulator for development and tests (not a model).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port to bind, 0 for any (8081)")
    args = parser.parse_args(argv)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        simulator = SimulatorServer(args.host, args.port)
    except OSError as exc:
        parser.exit(1, f"cannot listen on {args.host}:{args.port}: {exc}; try another --port\n")
    with simulator:
        print(f"genq upstream simulator (not a model) listening on {simulator.url}", flush=True)
        while not stopping.wait(timeout=0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
