"""The OpenAI-compatible Batch API, driven by the unmodified ``openai`` SDK against genq's
API process and a real Celery worker: files, batches, validation, tenancy, idempotency,
cancel, refusing degraded answers, output readable while running, and priority."""

from __future__ import annotations

import io
import json
import time
import uuid
from typing import Any

import openai
import pytest
import redis
import requests
from openai import OpenAI
from openai.types import Batch

from api.auth import owner_of
from core import circuits
from core.capacity import CallOutcome, CapacityStore
from core.settings import Settings
from simulator.server import SimulatorServer
from tests.integration.conftest import ADMIN_KEY, API_KEY, OTHER_KEY, auth, wait_final
from worker.generation import get_service
from worker.limiter import limit_options
from worker.upstream import UpstreamTarget

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("celery_session_worker")]

FINAL = {"completed", "failed", "cancelled", "expired"}


@pytest.fixture
def client(api_url: str) -> OpenAI:
    return OpenAI(base_url=f"{api_url}/v1", api_key=API_KEY, max_retries=0, timeout=30)


@pytest.fixture
def other(api_url: str) -> OpenAI:
    return OpenAI(base_url=f"{api_url}/v1", api_key=OTHER_KEY, max_retries=0, timeout=30)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def completion_lines(n: int, model: str | None = None, **body: Any) -> list[dict[str, Any]]:
    extra = {"model": model} if model else {}
    return [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {
                "prompt": f"batch prompt {i} {uuid.uuid4().hex[:6]}",
                "max_tokens": 8,
                **extra,
                **body,
            },
        }
        for i in range(n)
    ]


def upload(client: OpenAI, data: bytes, name: str = "in.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch").id


def run_batch(
    client: OpenAI, lines: list[dict[str, Any]], endpoint: str = "/v1/completions", **options: Any
) -> Batch:
    file_id = upload(client, jsonl(lines))
    return client.batches.create(
        input_file_id=file_id,
        endpoint=endpoint,
        completion_window="24h",
        **options,  # type: ignore[arg-type]
    )


def wait_batch(client: OpenAI, batch_id: str, timeout_s: float = 30) -> Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINAL or time.monotonic() > deadline:
            return batch
        time.sleep(0.1)


def lines_of(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line]


def test_the_sdk_runs_a_completions_batch_end_to_end(client: OpenAI, sim: SimulatorServer) -> None:
    """Upload, create, poll, read: every request answered in OpenAI's output shape, with
    genq's provenance, and the counts add up."""
    batch = run_batch(client, completion_lines(12), metadata={"purpose": "test"})
    assert batch.status == "in_progress"
    assert batch.metadata == {"purpose": "test"}
    assert batch.request_counts is not None and batch.request_counts.total == 12
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (12, 0)
    assert done.completed_at is not None and done.in_progress_at is not None
    output = lines_of(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"req-{i}" for i in range(12))
    first = output[0]
    assert first["error"] is None
    assert first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"].startswith("simulated")
    assert body["genq"]["source"] == "upstream"
    assert body["genq"]["degraded"] is False
    assert lines_of(client, done.error_file_id) == []
    assert done.model_extra is not None
    assert done.model_extra["genq"]["counts_by_source"]["upstream"] == 12
    assert sim.stats()["calls"] == 12
    info = client.files.retrieve(done.output_file_id)  # type: ignore[arg-type]
    assert info.purpose == "batch_output"
    assert info.bytes == len(client.files.content(done.output_file_id).content)  # type: ignore[arg-type]


def test_a_chat_batch_answers_chat_completion_objects(client: OpenAI) -> None:
    """``/v1/chat/completions`` lines give ``chat.completion`` bodies with a message."""
    lines = [
        {
            "custom_id": f"chat-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"hello {i}"},
                ],
                "max_completion_tokens": 8,
            },
        }
        for i in range(3)
    ]
    done = wait_batch(client, run_batch(client, lines, endpoint="/v1/chat/completions").id)
    assert done.status == "completed"
    body = lines_of(client, done.output_file_id)[0]["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"].startswith("simulated")


def test_files_can_be_read_back_and_deleted(client: OpenAI) -> None:
    """An upload reads back byte for byte; after delete it is 404."""
    data = jsonl(completion_lines(3))
    file_id = upload(client, data, "mine.jsonl")
    info = client.files.retrieve(file_id)
    assert (info.filename, info.bytes, info.purpose) == ("mine.jsonl", len(data), "batch")
    assert client.files.content(file_id).content == data
    assert client.files.delete(file_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_a_bad_line_fails_the_whole_batch_and_nothing_runs(
    client: OpenAI, sim: SimulatorServer
) -> None:
    """Invalid JSON, a wrong url, a missing prompt, an unsupported parameter and a
    duplicate custom_id are each reported with their line; no request runs."""
    good = completion_lines(2)
    bad_url = {**good[0], "custom_id": "x1", "url": "/v1/embeddings"}
    no_prompt = {**good[0], "custom_id": "x2", "body": {"max_tokens": 4}}
    unsupported = {**good[0], "custom_id": "x3", "body": {"prompt": "p", "logit_bias": {}}}
    duplicate = {**good[1]}
    data = (
        jsonl([good[0], good[1], bad_url, no_prompt, unsupported])
        + b"{not json\n"
        + jsonl([duplicate])
    )
    batch = client.batches.create(
        input_file_id=upload(client, data), endpoint="/v1/completions", completion_window="24h"
    )
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    found = {(e.line, e.code, e.param) for e in batch.errors.data}
    assert (3, "invalid_url", "url") in found
    assert (4, "missing_required_parameter", "body.prompt") in found
    assert (5, "unsupported_parameter", "body.logit_bias") in found
    assert (6, "invalid_json_line", None) in found
    assert (7, "duplicate_custom_id", None) in found
    assert batch.request_counts is not None and batch.request_counts.total == 0
    time.sleep(0.3)
    assert sim.stats()["calls"] == 0


def test_limits_answer_413_with_the_limit(client: OpenAI) -> None:
    """An upload over GENQ_MAX_UPLOAD_BYTES, or a file with more lines than
    GENQ_MAX_BATCH_REQUESTS, is refused with 413 naming the limit."""
    with pytest.raises(openai.APIStatusError) as too_big:
        upload(client, b"x" * 2_100_000)
    assert too_big.value.status_code == 413
    assert "2000000" in too_big.value.message
    file_id = upload(client, jsonl(completion_lines(301)))
    with pytest.raises(openai.APIStatusError) as too_many:
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/completions", completion_window="24h"
        )
    assert too_many.value.status_code == 413
    assert "300" in too_many.value.message


def test_files_and_batches_are_visible_only_to_their_key(client: OpenAI, other: OpenAI) -> None:
    """Another key gets 404 for the file, its content, the batch, its cancel, and does
    not see the batch in its list."""
    batch = run_batch(client, completion_lines(1))
    for call in (
        lambda: other.files.retrieve(batch.input_file_id),
        lambda: other.files.content(batch.input_file_id),
        lambda: other.files.content(batch.output_file_id),  # type: ignore[arg-type]
        lambda: other.files.delete(batch.input_file_id),
        lambda: other.batches.retrieve(batch.id),
        lambda: other.batches.cancel(batch.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in other.batches.list(limit=100)]
    assert client.batches.retrieve(batch.id).id == batch.id


def test_listing_pages_through_every_batch_and_ends(api_url: str) -> None:
    """``batches.list(limit=2)`` auto-paging yields every batch of a key once, newest
    first, and stops when has_more is false."""
    key = ADMIN_KEY  # a key no other test lists with
    client = OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0)
    made = [run_batch(client, completion_lines(1)).id for _ in range(5)]
    seen = [b.id for b in client.batches.list(limit=2)]
    assert seen[: len(made)] == list(reversed(made))
    assert len(seen) == len(set(seen))
    page = client.batches.list(limit=2)
    assert page.has_more is True
    last = client.batches.list(limit=100)
    assert last.has_more is False


def test_idempotency_key_returns_the_original_or_409(client: OpenAI, api_url: str) -> None:
    """Same Idempotency-Key and body: the same batch (and job); another body: 409."""
    file_id = upload(client, jsonl(completion_lines(1)))
    key = {"Idempotency-Key": uuid.uuid4().hex}
    create = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"}
    first = client.batches.create(**create, extra_headers=key)  # type: ignore[arg-type]
    again = client.batches.create(**create, extra_headers=key)  # type: ignore[arg-type]
    assert again.id == first.id
    with pytest.raises(openai.ConflictError):
        client.batches.create(**{**create, "metadata": {"x": "y"}}, extra_headers=key)  # type: ignore[arg-type]
    job = {"prompt": f"idempotent {uuid.uuid4().hex}"}
    posted = [
        requests.post(f"{api_url}/v1/jobs", json=job, headers={**auth(), **key}, timeout=10)
        for _ in range(2)
    ]
    assert posted[0].json()["id"] == posted[1].json()["id"]
    clash = requests.post(
        f"{api_url}/v1/jobs", json={"prompt": "other"}, headers={**auth(), **key}, timeout=10
    )
    assert clash.status_code == 409


def test_cancel_runs_no_pending_request_and_keeps_counts_exact(
    client: OpenAI, sim: SimulatorServer
) -> None:
    """Cancelled mid-run: requests not yet started never reach the upstream, the ones
    running finish, and completed + failed + cancelled = total."""
    sim.configure(latency_ms=300)
    batch = run_batch(client, completion_lines(40))
    time.sleep(0.5)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_batch(client, batch.id, timeout_s=30)
    assert done.status == "cancelled"
    assert done.cancelled_at is not None and done.cancelling_at is not None
    counts = done.request_counts
    assert counts is not None and done.model_extra is not None
    cancelled = done.model_extra["genq"]["cancelled"]
    assert counts.completed + counts.failed + cancelled == 40
    assert 0 < cancelled < 40
    assert sim.stats()["calls"] == counts.completed + counts.failed
    assert len(lines_of(client, done.output_file_id)) == counts.completed


def test_a_batch_can_refuse_degraded_answers(
    client: OpenAI, r: redis.Redis, genq_settings: Settings
) -> None:
    """With ``metadata.genq_fallback = "none"`` and the circuit open, items with context
    wait for the circuit instead of answering with an excerpt, and neither fail nor
    answer until it is reset; then the upstream answers them all."""
    model = f"simulator/refuse-{uuid.uuid4().hex[:8]}"
    name = UpstreamTarget.from_settings(genq_settings, model).name
    circuits.force_open(r, name, genq_settings.breaker_reset_timeout_s)
    context = [{"id": "d", "text": "The runbook says to serve cached answers."}]
    try:
        lines = completion_lines(2, model=model, context=context)
        degraded = wait_batch(client, run_batch(client, lines).id)
        refusing = run_batch(
            client,
            completion_lines(2, model=model, context=context),
            metadata={"genq_fallback": "none"},
        )
        time.sleep(3 * genq_settings.breaker_reset_timeout_s)  # a few waits for the circuit
        waiting = client.batches.retrieve(refusing.id)
    finally:
        circuits.reset(r, name, genq_settings.breaker_reset_timeout_s)
    answered = lines_of(client, degraded.output_file_id)
    assert {line["response"]["body"]["genq"]["source"] for line in answered} == {"excerpt"}
    assert answered[0]["response"]["body"]["genq"]["fallback_reason"] == "circuit_forced_open"
    assert waiting.status == "in_progress"
    assert waiting.request_counts is not None
    assert (waiting.request_counts.completed, waiting.request_counts.failed) == (0, 0)
    refused = wait_batch(client, refusing.id)
    assert refused.status == "completed"
    assert refused.request_counts is not None and refused.request_counts.completed == 2
    sources = {
        line["response"]["body"]["genq"]["source"]
        for line in lines_of(client, refused.output_file_id)
    }
    assert sources == {"upstream"}


def test_a_batch_through_a_short_outage_answers_every_item(
    client: OpenAI, api_url: str, sim: SimulatorServer, genq_settings: Settings
) -> None:
    """Provider down and the circuit open, a 20-line batch with no cache entry and no
    context, provider back 4 s later: every item is answered upstream, none fails."""
    model = f"simulator/outage-{uuid.uuid4().hex[:8]}"
    sim.configure(mode="outage")
    for _ in range(genq_settings.breaker_fail_max):
        body = {"prompt": "trip", "model": model, "fallback": "none"}
        resp = requests.post(f"{api_url}/v1/jobs", json=body, headers=auth(), timeout=10)
        wait_final(api_url, resp.headers["Location"])
    batch = run_batch(client, completion_lines(20, model=model))
    time.sleep(4)
    sim.configure(mode="ok")
    done = wait_batch(client, batch.id, timeout_s=90)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (20, 0)
    answered = lines_of(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in answered) == sorted(f"req-{i}" for i in range(20))
    assert {line["response"]["body"]["genq"]["source"] for line in answered} == {"upstream"}
    assert lines_of(client, done.error_file_id) == []


def test_output_is_readable_while_the_batch_runs(client: OpenAI, sim: SimulatorServer) -> None:
    """Before the batch completes, its output file already holds the finished lines."""
    sim.configure(latency_ms=200)
    batch = run_batch(client, completion_lines(24))
    deadline = time.monotonic() + 20
    partial: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not partial:
        partial = lines_of(client, batch.output_file_id)
        time.sleep(0.1)
    assert client.batches.retrieve(batch.id).status == "in_progress"
    assert 0 < len(partial) < 24
    assert wait_batch(client, batch.id).status == "completed"


def test_an_interactive_job_does_not_wait_behind_a_batch(
    client: OpenAI, api_url: str, sim: SimulatorServer
) -> None:
    """With a batch queued, a job on the interactive queue finishes within its own
    latency plus about one batch item, not after the batch."""
    sim.configure(latency_ms=200)
    batch = run_batch(client, completion_lines(60))
    time.sleep(0.5)  # the worker's threads are busy with batch items
    started = time.monotonic()
    resp = requests.post(
        f"{api_url}/v1/jobs", json={"prompt": "urgent"}, headers=auth(), timeout=10
    )
    job = wait_final(api_url, resp.headers["Location"])
    elapsed = time.monotonic() - started
    assert job["status"] == "succeeded"
    assert elapsed < 0.2 + 0.2 + 0.5, elapsed  # its call, one batch item, overhead
    assert client.batches.retrieve(batch.id).status == "in_progress"
    client.batches.cancel(batch.id)
    wait_batch(client, batch.id)


def test_a_batch_items_internal_error_is_recorded_in_its_batch_at_once(
    client: OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item whose run raises (its upstream call, here) is its batch's error line at
    once, ``internal_error``, and the batch completes: nothing waits for the sweep."""
    model = f"simulator/explode-{uuid.uuid4().hex[:8]}"
    service = get_service()  # the session worker's: it runs in this process
    real = service._call_upstream

    def explode(target: Any, request: Any) -> Any:
        if request.model == model:
            raise RuntimeError("the run of this item raises")
        return real(target, request)

    monkeypatch.setattr(service, "_call_upstream", explode)
    started = time.monotonic()
    done = wait_batch(client, run_batch(client, completion_lines(2, model=model)).id)
    assert done.status == "completed"
    assert time.monotonic() - started < 20  # the sweep's grace alone is 60 s
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 2)
    errors = lines_of(client, done.error_file_id)
    assert {line["error"]["code"] for line in errors} == {"internal_error"}
    assert all("RuntimeError" in line["error"]["message"] for line in errors)


def test_small_batches_behind_a_large_one_run_beside_it(
    client: OpenAI, other: OpenAI, sim: SimulatorServer
) -> None:
    """A 300-line batch, then another key's 8-line batch and the same key's 8-line
    batch: the scheduler releases their items beside the large one's (an equal share
    per key, then per batch), so both small ones finish while most of the large one is
    still waiting, its backlog shown in its ``genq`` object."""
    sim.configure(latency_ms=30)
    large = run_batch(client, completion_lines(300))
    time.sleep(0.3)
    theirs = run_batch(other, completion_lines(8))
    mine = run_batch(client, completion_lines(8))
    for small, by in ((theirs, other), (mine, client)):
        done = wait_batch(by, small.id, timeout_s=20)
        assert done.status == "completed"
        assert done.request_counts is not None and done.request_counts.completed == 8
    running = client.batches.retrieve(large.id)
    assert running.status == "in_progress" and running.request_counts is not None
    assert running.request_counts.completed < 200  # both small ones did not wait for it
    assert running.model_extra is not None and running.model_extra["genq"]["backlog"] > 0
    finished = wait_batch(client, large.id, timeout_s=60)
    assert finished.status == "completed"
    assert finished.request_counts is not None and finished.request_counts.completed == 300
    assert finished.model_extra is not None and finished.model_extra["genq"]["backlog"] == 0


def test_a_cancel_counts_the_items_never_released(
    client: OpenAI, sim: SimulatorServer, r: redis.Redis
) -> None:
    """Cancelled while most of its items still wait with the scheduler: they are counted
    cancelled at once, none of them reaches the upstream, and the counts add up."""
    sim.configure(latency_ms=100)
    batch = run_batch(client, completion_lines(200))
    time.sleep(0.5)
    before = client.batches.retrieve(batch.id)
    assert before.model_extra is not None and before.model_extra["genq"]["backlog"] > 0
    client.batches.cancel(batch.id)
    done = wait_batch(client, batch.id, timeout_s=30)
    assert done.status == "cancelled"
    counts = done.request_counts
    assert counts is not None and done.model_extra is not None
    cancelled = done.model_extra["genq"]["cancelled"]
    assert counts.completed + counts.failed + cancelled == 200
    assert cancelled >= before.model_extra["genq"]["backlog"]
    assert sim.stats()["calls"] == counts.completed + counts.failed


def test_after_a_cancel_no_item_waiting_for_a_call_slot_calls_the_upstream(
    client: OpenAI, sim: SimulatorServer, r: redis.Redis, genq_settings: Settings
) -> None:
    """The target's call limit held but for one slot: of the worker's four threads, one
    calls and three wait for the slot with their items in hand. Cancelled then, no item
    that had not called the upstream calls it: an item is marked running only once it
    holds a slot, and that mark is where a cancel stops it."""
    model = f"simulator/cancel-{uuid.uuid4().hex[:8]}"
    target = UpstreamTarget.from_settings(genq_settings, model).name
    store = CapacityStore(r, limit_options(genq_settings))
    held = [f"held-{i}" for i in range(genq_settings.upstream_initial_in_flight - 1)]
    assert all(store.try_acquire(target, token).granted for token in held)
    sim.configure(latency_ms=300)
    try:
        batch = run_batch(client, completion_lines(30, model=model))
        time.sleep(1.0)  # a call or three made, the other threads waiting for the slot
        client.batches.cancel(batch.id)
        calls_at_cancel = sim.stats()["calls"]
        done = wait_batch(client, batch.id, timeout_s=30)
    finally:
        for token in held:
            store.release(target, token, CallOutcome.NEUTRAL, 0)
    assert done.status == "cancelled"
    counts = done.request_counts
    assert counts is not None and done.model_extra is not None
    assert counts.completed + counts.failed + done.model_extra["genq"]["cancelled"] == 30
    # At most the one call that held the slot as the cancel landed may still start.
    assert sim.stats()["calls"] <= calls_at_cancel + 1
    assert sim.stats()["calls"] == counts.completed + counts.failed


def test_the_backlog_is_shown_on_the_batch_and_in_metrics(
    client: OpenAI, api_url: str, r: redis.Redis, genq_settings: Settings
) -> None:
    """While a batch's items wait (every call slot of its target held elsewhere), what the
    scheduler has not released is its ``genq.backlog``, and /metrics shows it under the
    key's owner id (never the key); the batch queue stays at the ready depth."""
    model = f"simulator/backlog-{uuid.uuid4().hex[:8]}"
    target = UpstreamTarget.from_settings(genq_settings, model).name
    store = CapacityStore(r, limit_options(genq_settings))
    held = [f"held-{i}" for i in range(genq_settings.upstream_initial_in_flight)]
    assert all(store.try_acquire(target, token).granted for token in held)
    try:
        batch = run_batch(client, completion_lines(300, model=model))
        time.sleep(0.5)
        backlog = client.batches.retrieve(batch.id).model_extra["genq"]["backlog"]  # type: ignore[index]
        assert 300 - genq_settings.batch_ready_depth - 8 <= backlog < 300
        line = f'genq_batch_backlog_items{{owner="{owner_of(API_KEY)}"}}'

        def shown() -> float:
            text = requests.get(f"{api_url}/metrics", timeout=5).text
            assert API_KEY not in text
            found = [s for s in text.splitlines() if s.startswith(line)]
            return float(found[0].split()[-1]) if found else 0.0

        deadline = time.monotonic() + 8  # the API's monitor reads the cluster every 5 s
        while shown() < backlog - 8:
            assert time.monotonic() < deadline, f"/metrics shows {shown()}, not {backlog}"
            time.sleep(0.5)
        client.batches.cancel(batch.id)
    finally:
        for token in held:
            store.release(target, token, CallOutcome.NEUTRAL, 0)
    assert wait_batch(client, batch.id).status == "cancelled"
