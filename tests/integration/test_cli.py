"""The ``genq`` CLI against the real API process and a real Celery worker: batch run
(answers, validation errors, a misspelled prompt, refused items, degraded answers,
Ctrl-C), the batch commands, submit --wait, circuits, --json and one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import Result
from typer.testing import CliRunner

from cli.main import app
from core.settings import Settings
from simulator.server import SimulatorServer
from tests.integration.conftest import ADMIN_KEY, API_KEY, auth
from worker.upstream import UpstreamTarget

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("celery_session_worker")]


def genq(api_url: str, *args: str, key: str = API_KEY) -> Result:
    """``genq ARGS`` in-process, configured by the environment as a user would."""
    env = {"GENQ_API_URL": api_url, "GENQ_API_KEY": key, "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env)


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def count_row(text: str, label: str) -> int:
    """The count in the summary table's row ``label``."""
    found = re.search(rf"│ {re.escape(label)}\s*│\s*(\d+) │", text)
    assert found, f"no row {label!r} in:\n{text}"
    return int(found.group(1))


def prompts(n: int, **body: Any) -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex[:6]
    return [{"prompt": f"cli prompt {i} {tag}", "max_tokens": 6, **body} for i in range(n)]


@pytest.fixture
def forced_open(api_url: str, genq_settings: Settings) -> Any:
    """A model of its own whose circuit the admin forces open with ``genq circuits open``;
    reset with ``genq circuits reset`` afterwards."""
    model = f"simulator/cli-{uuid.uuid4().hex[:8]}"
    name = UpstreamTarget.from_settings(genq_settings, model).name
    opened = genq(api_url, "circuits", "open", name, key=ADMIN_KEY)
    assert opened.exit_code == 0, opened.output
    assert f"circuit {name}: forced_open" in opened.stdout
    yield model, name
    reset = genq(api_url, "circuits", "reset", name, key=ADMIN_KEY)
    assert reset.exit_code == 0, reset.output
    assert f"circuit {name}: closed" in reset.stdout


def test_batch_run_answers_every_prompt_line_and_exits_0(
    api_url: str, sim: SimulatorServer, tmp_path: Path
) -> None:
    """Ten prompt lines: exit 0, ten output lines in input order, all from the upstream,
    and the summary counts them."""
    source = write_jsonl(tmp_path / "ten.jsonl", prompts(10))
    result = genq(api_url, "batch", "run", str(source))
    assert result.exit_code == 0, result.output
    lines = read_jsonl(tmp_path / "ten.results.jsonl")
    assert [line["custom_id"] for line in lines] == [f"line-{n}" for n in range(1, 11)]
    assert {line["response"]["body"]["genq"]["source"] for line in lines} == {"upstream"}
    assert "10 prompt lines converted" in result.stdout
    assert count_row(result.stdout, "answered from upstream") == 10
    assert "10 answers and 0 errors written to" in result.stdout
    assert sim.stats()["calls"] == 10


def test_a_bad_line_fails_the_batch_and_the_run_shows_each_line(
    api_url: str, sim: SimulatorServer, tmp_path: Path
) -> None:
    """Invalid JSON on line 2 and an unsupported parameter on line 3: exit 1, both
    reasons printed with their line numbers, nothing run."""
    source = tmp_path / "bad.jsonl"
    source.write_text('{"prompt": "fine"}\n{not json\n{"prompt": "x", "logit_bias": {}}\n')
    result = genq(api_url, "batch", "run", str(source))
    assert result.exit_code == 1, result.output
    assert "failed validation; nothing ran" in result.stdout
    assert "line 2: invalid_json_line" in result.stdout
    assert "line 3: unsupported_parameter: body.logit_bias" in result.stdout
    assert sim.stats()["calls"] == 0


def test_refused_items_wait_for_the_circuit_and_degraded_ones_are_counted(
    api_url: str, tmp_path: Path, forced_open: tuple[str, str]
) -> None:
    """Circuit forced open: lines with context are answered by excerpt at once; lines
    with ``fallback: none`` wait for the circuit (reset 3 s later) and are answered by
    the upstream, not failed; exit 0, and the summary counts both."""
    model, name = forced_open
    context = [{"id": "runbook", "text": "During an outage serve cached answers first."}]
    lines = prompts(2, model=model, fallback="none") + prompts(3, model=model, context=context)
    out = tmp_path / "out.jsonl"
    reset = threading.Timer(3, lambda: genq(api_url, "circuits", "reset", name, key=ADMIN_KEY))
    reset.start()
    try:
        result = genq(
            api_url, "batch", "run", str(write_jsonl(tmp_path / "in.jsonl", lines)), "-o", str(out)
        )
    finally:
        reset.join()
    assert result.exit_code == 0, result.output
    written = read_jsonl(out)
    assert [line["custom_id"] for line in written] == [f"line-{n}" for n in range(1, 6)]
    sources = [line["response"]["body"]["genq"]["source"] for line in written]
    assert sources == ["upstream"] * 2 + ["excerpt"] * 3
    assert count_row(result.stdout, "answered from excerpt (degraded)") == 3
    assert count_row(result.stdout, "answered from upstream") == 2


def test_rejected_items_fail_the_run(api_url: str, sim: SimulatorServer, tmp_path: Path) -> None:
    """Lines the upstream rejects (400) end as error lines: exit 1, and the summary says
    not every request was answered."""
    sim.configure(script=[{"status": 400}] * 2)
    result = genq(api_url, "batch", "run", str(write_jsonl(tmp_path / "in.jsonl", prompts(2))))
    assert result.exit_code == 1, result.output
    written = read_jsonl(tmp_path / "in.results.jsonl")
    assert [line["error"]["code"] for line in written] == ["upstream_rejected"] * 2
    assert count_row(result.stdout, "failed") == 2
    assert "not every request was answered" in result.stdout


def test_batch_status_list_results_and_cancel(
    api_url: str, sim: SimulatorServer, tmp_path: Path
) -> None:
    """A slow batch made over HTTP: status and list show it, cancel stops it, results
    writes what finished (output then errors)."""
    sim.configure(latency_ms=300)
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions", "body": body}
        for i, body in enumerate(prompts(30))
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    files = {"file": ("in.jsonl", data)}
    file_id = requests.post(
        f"{api_url}/v1/files", files=files, data={"purpose": "batch"}, headers=auth(), timeout=10
    ).json()["id"]
    create = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"}
    batch_id = requests.post(
        f"{api_url}/v1/batches", json=create, headers=auth(), timeout=10
    ).json()["id"]
    status = genq(api_url, "batch", "status", batch_id)
    assert status.exit_code == 0, status.output
    assert "in_progress" in status.stdout and "/30" in status.stdout
    listed = genq(api_url, "batch", "list", "--limit", "5")
    assert listed.exit_code == 0 and batch_id in listed.stdout
    cancelled = genq(api_url, "batch", "cancel", batch_id, "--wait")
    assert cancelled.exit_code == 0, cancelled.output
    assert f"{batch_id}  cancelled" in cancelled.stdout
    out = tmp_path / "results.jsonl"
    results = genq(api_url, "batch", "results", batch_id, "-o", str(out))
    assert results.exit_code == 0, results.output
    done = requests.get(f"{api_url}/v1/batches/{batch_id}", headers=auth(), timeout=5).json()
    assert len(read_jsonl(out)) == done["request_counts"]["completed"] < 30
    as_json = json.loads(genq(api_url, "batch", "status", batch_id, "--json").stdout)
    assert as_json["status"] == "cancelled" and as_json["genq"]["cancelled"] > 0
    again = genq(api_url, "batch", "cancel", batch_id, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == as_json


def test_a_misspelled_prompt_is_reported_and_nothing_is_sent(
    api_url: str, sim: SimulatorServer, tmp_path: Path
) -> None:
    """A line ``{"promt": …}``: exit 1 naming the line and the typo, not a missing
    custom_id; no batch is created and the upstream is never called."""
    before = genq(api_url, "batch", "list", "--limit", "1", "--json")
    source = tmp_path / "typo.jsonl"
    source.write_text('{"prompt": "fine"}\n{"promt": "hi", "custom_id": "a"}\n')
    result = genq(api_url, "batch", "run", str(source))
    assert result.exit_code == 1
    assert 'line 2: unknown field "promt" (did you mean "prompt"?)' in result.stderr
    assert "custom_id" not in result.output
    after = genq(api_url, "batch", "list", "--limit", "1", "--json")
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert sim.stats()["calls"] == 0


def test_json_prints_each_object_as_the_api_sends_it(api_url: str, tmp_path: Path) -> None:
    """--json: ``submit`` prints the queued job (with --wait the final one), ``batch run``
    the final batch on stdout with its progress on stderr, ``batch list`` and
    ``circuits`` their lists; each equal to what the API answers for the same object."""
    queued = json.loads(genq(api_url, "submit", "json please", "--json").stdout)
    assert queued["status"] in ("queued", "running", "succeeded") and len(queued["id"]) == 32
    waited = genq(api_url, "submit", "json and wait", "--wait", "--json", "--max-tokens", "8")
    assert waited.exit_code == 0, waited.output
    job = json.loads(waited.stdout)
    assert job["status"] == "succeeded" and job["result"]["source"] == "upstream"
    fetched = requests.get(f"{api_url}/v1/jobs/{job['id']}", headers=auth(), timeout=5).json()
    assert job == fetched
    source = write_jsonl(tmp_path / "two.jsonl", prompts(2))
    run = genq(api_url, "batch", "run", str(source), "--json")
    assert run.exit_code == 0, run.output
    batch = json.loads(run.stdout)
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 2
    assert "2 answers and 0 errors written to" in run.stderr
    listed = json.loads(genq(api_url, "batch", "list", "--limit", "1", "--json").stdout)
    assert [b["id"] for b in listed] == [batch["id"]]
    circuits = json.loads(genq(api_url, "circuits", "--json").stdout)
    from_api = requests.get(f"{api_url}/v1/circuits", headers=auth(), timeout=5).json()
    assert {c["name"] for c in circuits} == {c["name"] for c in from_api}


def test_submit_wait_prints_the_answer_and_where_it_came_from(
    api_url: str, tmp_path: Path, forced_open: tuple[str, str]
) -> None:
    """``submit --wait``: the upstream's text and ``source: upstream``; with the circuit
    open and a context file, an excerpt marked degraded with its reason and circuit."""
    healthy = genq(api_url, "submit", "say hello to the cli", "--wait", "--max-tokens", "8")
    assert healthy.exit_code == 0, healthy.output
    assert healthy.stdout.strip() == "simulated: cli the to hello say"
    assert "source: upstream" in healthy.stderr
    model, name = forced_open
    doc = tmp_path / "runbook.txt"
    doc.write_text("When the provider is down, answer from the runbook.")
    args = ["submit", "what if the provider is down", "--wait", "--model", model]
    degraded = genq(api_url, *args, "--context-file", str(doc))
    assert degraded.exit_code == 0, degraded.output
    assert "answer from the runbook" in degraded.stdout
    assert f"source: excerpt (degraded: circuit_forced_open; circuit {name}" in degraded.stderr
    refused = genq(
        api_url, "submit", "no fallback", "--wait", "--model", model, "--fallback", "none"
    )
    assert refused.exit_code == 1
    assert "job failed: service_unavailable" in refused.stderr
    queued = genq(api_url, "submit", "just the id")
    assert queued.exit_code == 0 and len(queued.stdout.strip()) == 32


def test_circuits_list_and_control_need_the_admin_key(
    api_url: str, forced_open: tuple[str, str]
) -> None:
    """``genq circuits`` lists the forced-open circuit; a user key may not steer it (403,
    one line); the admin key closes it."""
    _, name = forced_open
    listed = genq(api_url, "circuits")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if name in line)
    assert "forced_open" in row
    refused = genq(api_url, "circuits", "close", name)
    assert refused.exit_code == 1
    assert refused.stderr.strip() == "genq: HTTP 403: an admin key is required"
    closed = genq(api_url, "circuits", "close", name, key=ADMIN_KEY)
    assert closed.exit_code == 0 and f"circuit {name}: forced_closed" in closed.stdout


def test_a_wrong_key_is_one_line_and_never_printed(api_url: str, tmp_path: Path) -> None:
    """An unknown key: exit 1 with the API's 401 reason on one line; the key is not in it."""
    wrong = "wrong-key-that-must-not-be-printed"
    source = write_jsonl(tmp_path / "x.jsonl", prompts(1))
    result = genq(api_url, "batch", "run", str(source), key=wrong)
    assert result.exit_code == 1
    assert result.stderr.startswith("genq: HTTP 401: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert wrong not in result.output


def start_cli(api_url: str, source: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``python -m cli batch run SOURCE ARGS`` as a process, and its batch id once the
    batch exists."""
    env = {**os.environ, "GENQ_API_URL": api_url, "GENQ_API_KEY": API_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "batch", "run", str(source), *args],
        env={**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("batch batch_"), first
    return proc, first.split()[1].rstrip(":")


@pytest.mark.parametrize("cancel", [True, False])
def test_ctrl_c_cancels_or_detaches_as_told(
    api_url: str, sim: SimulatorServer, tmp_path: Path, cancel: bool
) -> None:
    """SIGINT during a run: with --cancel-on-interrupt the batch ends cancelled, the
    partial results are written and the exit is 1; with --no-cancel-on-interrupt the
    batch keeps running, nothing is written, the exit is 130 and the way back printed."""
    sim.configure(latency_ms=300)
    source = write_jsonl(tmp_path / "slow.jsonl", prompts(40))
    flag = "--cancel-on-interrupt" if cancel else "--no-cancel-on-interrupt"
    proc, batch_id = start_cli(api_url, source, flag)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    batch = requests.get(f"{api_url}/v1/batches/{batch_id}", headers=auth(), timeout=5).json()
    results = tmp_path / "slow.results.jsonl"
    if cancel:
        assert proc.returncode == 1, output
        assert batch["status"] == "cancelled"
        assert 0 < len(read_jsonl(results)) == batch["request_counts"]["completed"] < 40
    else:
        assert proc.returncode == 130, output
        assert batch["status"] in ("in_progress", "completed")
        assert f"genq batch status {batch_id}" in output
        assert not results.exists()
        requests.post(f"{api_url}/v1/batches/{batch_id}/cancel", headers=auth(), timeout=5)
