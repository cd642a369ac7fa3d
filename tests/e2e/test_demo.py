"""The whole stack as processes: `make demo`'s command brings it up, runs batches through
the `genq` CLI with an outage in the middle, prints a summary, and tears it down."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.demo import DEMO_STACK_ENV
from devstack.demo_sample import main_lines, warmup_lines

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_every_main_prompt_has_a_cached_twin_or_context() -> None:
    """The sample is built so that no request can fail during the outage: each line of
    the main batch repeats a warm-up request exactly (a cache hit) or carries context
    documents (an excerpt), and both kinds are there."""
    warm = {json.dumps(line["body"], sort_keys=True) for line in warmup_lines()}
    lines = main_lines()
    twins = [json.dumps(line, sort_keys=True) in warm for line in lines]
    with_context = [bool(line.get("context")) for line in lines]
    assert len(lines) == 60
    assert all(t or c for t, c in zip(twins, with_context, strict=True))
    assert sum(twins) == 30 and sum(with_context) == 30
    assert DEMO_STACK_ENV["GENQ_BREAKER_RESET_TIMEOUT_S"] == "3"


@pytest.mark.timeout(240)
def test_demo_runs_a_batch_through_an_outage_and_recovers() -> None:
    """`python -m devstack demo` exits 0; its summary shows answers from the cache and
    from excerpts with none failed, the circuit opened, probed and closed again, and
    every process of the stack stopped afterwards."""
    # As from a clean shell: the integration fixtures leave GENQ_* set in this process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    done = subprocess.run(
        [sys.executable, "-m", "devstack", "demo", "--timeout-s", "120"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-3000:]
    answers = re.search(
        r"answers: upstream (\d+) · cache (\d+) · excerpt (\d+) · failed (\d+)", out
    )
    assert answers, out[-3000:]
    upstream, cache, excerpt, failed = map(int, answers.groups())
    assert cache > 0 and excerpt > 0 and failed == 0
    assert upstream + cache + excerpt == 100
    story = re.search(
        r"circuit \S+: opened (\d+) · half_open (\d+) · closed (\d+) · now closed", out
    )
    assert story, out[-3000:]
    assert all(int(n) >= 1 for n in story.groups())
    assert re.search(r"circuit \S+: closed → open", out), "the CLI did not show the opening"
    assert "every request got an answer (100/100)" in out
    main = [json.loads(line) for line in (ROOT / ".run/demo/main.results.jsonl").open()]
    reasons = {line["response"]["body"]["genq"]["fallback_reason"] for line in main}
    assert reasons & {"circuit_open", "upstream_failed"}
    log = (ROOT / ".run" / "demo-stack.log").read_text()
    for name in ("redis", "simulator", "worker", "api", "flower"):
        assert f"{name} stopped" in log, f"{name} was not stopped"
