"""The whole stack as processes: `make demo`'s command brings it up, runs jobs, tears it down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack.demo import SAMPLE_PROMPTS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(240)
def test_demo_runs_every_sample_job_through_the_stack() -> None:
    """`python -m devstack demo` exits 0 once every sample job succeeded, then stops it all."""
    done = subprocess.run(
        [sys.executable, "-m", "devstack", "demo", "--timeout-s", "120"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    n = len(SAMPLE_PROMPTS)
    assert f"{n}/{n} succeeded" in done.stdout
    log = (ROOT / ".run" / "demo-stack.log").read_text()
    for name in ("redis", "simulator", "worker", "api", "flower"):
        assert f"{name} stopped" in log, f"{name} was not stopped"
