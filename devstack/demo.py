"""``make demo``: start the stack, push sample prompts through the HTTP API, print a summary.

It drives genq exactly as a client would: POST /v1/jobs, then poll each ``Location``
until the job is final. The stack runs as a child process (``python -m devstack run``)
and is stopped with SIGINT, as Ctrl-C would, whatever happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from rich.console import Console
from rich.table import Table

from devstack.stack import ROOT, plan_stack, wait_ready

__all__ = ["SAMPLE_PROMPTS", "run_demo"]

SAMPLE_PROMPTS = [
    "Summarise why circuit breakers protect upstream services",
    "Write a haiku about message queues",
    "Explain exponential backoff with jitter in one sentence",
    "List three things a job queue must never lose",
    "What does Retry-After tell a client",
    "Name the states of a circuit breaker",
]


def _submit(api: str, headers: dict[str, str], prompt: str) -> str:
    body = {"prompt": prompt, "params": {"max_new_tokens": 24}}
    resp = requests.post(f"{api}/v1/jobs", json=body, headers=headers, timeout=10)
    resp.raise_for_status()
    return str(resp.headers["Location"])


def _poll(api: str, headers: dict[str, str], locations: list[str], timeout_s: float) -> list[dict]:  # type: ignore[type-arg]
    jobs: dict[str, dict] = {}  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(jobs) < len(locations):
        for loc in locations:
            if loc in jobs:
                continue
            job = requests.get(f"{api}{loc}", headers=headers, timeout=10).json()
            if job["status"] in ("succeeded", "failed"):
                jobs[loc] = job
        time.sleep(0.2)
    return [
        jobs.get(loc, {"id": loc.rsplit("/", 1)[-1], "status": "timed out"}) for loc in locations
    ]


def _table(prompts: list[str], jobs: list[dict], elapsed_s: float) -> Table:  # type: ignore[type-arg]
    table = Table(title=f"genq demo: {len(jobs)} jobs in {elapsed_s:.1f} s")
    for column in ("job", "status", "source", "latency ms", "prompt", "answer"):
        table.add_column(column, overflow="fold")
    for prompt, job in zip(prompts, jobs, strict=True):
        result = job.get("result") or {}
        answer = result.get("text") or (job.get("error") or {}).get("message", "")
        table.add_row(
            job["id"][:8],
            job["status"],
            result.get("source", "-"),
            f"{result['latency_ms']:.1f}" if result else "-",
            prompt[:40],
            answer[:60],
        )
    return table


def run_demo(timeout_s: float = 90.0) -> int:
    """Run the demo; 0 when every sample job succeeded."""
    console = Console(width=None if sys.stdout.isatty() else 120)
    stack = plan_stack(console.print)
    log_path = ROOT / ".run" / "demo-stack.log"
    log_path.parent.mkdir(exist_ok=True)
    # The child plans the same stack: same ports, same key, same upstream choice.
    env = {**os.environ, "GENQ_API_KEYS": stack.env["GENQ_API_KEYS"]}
    env.update({k: v for k, v in stack.env.items() if k.startswith("GENQ_DEV_")})
    with log_path.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "devstack", "run", "--no-banner"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        return _drive(console, stack.urls["api"], stack.api_key, log_path, timeout_s)
    finally:
        _stop(child)


def _drive(console: Console, api: str, key: str, log_path: Path, timeout_s: float) -> int:
    console.print(f"starting the stack (log: {log_path.relative_to(ROOT)}) ...")
    if not wait_ready(api, timeout_s=60):
        console.print("[red]the API did not become ready; last lines of the log:[/red]")
        console.print(log_path.read_text()[-3000:])
        return 1
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    locations = [_submit(api, headers, prompt) for prompt in SAMPLE_PROMPTS]
    jobs = _poll(api, headers, locations, timeout_s)
    console.print(_table(SAMPLE_PROMPTS, jobs, time.monotonic() - started))
    ok = sum(job["status"] == "succeeded" for job in jobs)
    console.print(f"{ok}/{len(jobs)} succeeded; the answers come from the upstream simulator.")
    if ok != len(jobs):
        console.print(log_path.read_text()[-3000:])
    return 0 if ok == len(jobs) else 1


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGINT)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
