"""genq's own processes for tests that bring their own Redis: a real Celery worker and
the API under uvicorn, started as the Procfile starts them, with logs kept for reading."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack.redis import free_port
from tests.integration.conftest import start_process, start_worker, wait_http

__all__ = ["GenqProcesses", "genq_processes", "log_path", "stop", "unique"]


def log_path(log_name: str) -> Path:
    """Where :func:`tests.integration.conftest.start_process` writes a process's output."""
    return Path(f"/tmp/genq-test-{log_name}.log")


def unique(name: str) -> str:
    """A log name of this test session only, so concurrent sessions do not share log files."""
    return f"{name}-{os.getpid()}"


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM (a warm shutdown for Celery), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class GenqProcesses:
    """A running worker and API: the API's base URL and both processes' log files."""

    api_url: str
    logs: dict[str, Path]

    def log_text(self) -> str:
        """Everything both processes wrote so far."""
        return "".join(path.read_text(errors="replace") for path in self.logs.values())


@contextmanager
def genq_processes(env: dict[str, str], tag: str) -> Iterator[GenqProcesses]:
    """``celery -A worker.app worker -Q interactive,batch`` and ``uvicorn api.main:app``
    with ``env``; yields once the API is ready (it reached Redis), stops both after."""
    names = {"worker": unique(f"{tag}-worker"), "api": unique(f"{tag}-api")}
    port = free_port()
    worker = start_worker(env, tag, names["worker"])
    try:
        api = start_process(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)],
            env,
            names["api"],
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/healthz", timeout_s=15)
            wait_http(f"{url}/readyz", timeout_s=10)
            yield GenqProcesses(url, {name: log_path(log) for name, log in names.items()})
        finally:
            stop(api)
    finally:
        stop(worker)
