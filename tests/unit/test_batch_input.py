"""Batch input lines into genq jobs (api.batch_input) and into Celery messages
(api.publish, api.routes.batches): pure, no Redis."""

from __future__ import annotations

import base64
import json
from typing import Any

from api.batch_input import MAX_LISTED_ERRORS, BatchPolicy, parse_lines
from api.publish import TaskMessages
from api.routes.batches import _messages
from core.batches import BatchCounts, BatchRecord, BatchSources, BatchTimes
from core.contract import BatchItem, GenerateRequest, JobMessage, batch_item_json
from core.openai_batch import custom_id_of, request_lines
from core.settings import Settings
from worker.app import app

SETTINGS = Settings(max_prompt_chars=100)
AUTO = BatchPolicy()


def line(body: dict[str, Any], custom_id: str = "a", url: str = "/v1/completions") -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).encode()


def test_completion_parameters_map_onto_genq_params() -> None:
    """max_tokens, temperature, top_p and a string stop become GenerationParams."""
    body = {"prompt": "hi", "max_tokens": 7, "temperature": 0.2, "top_p": 0.5, "stop": "\n"}
    parsed = parse_lines([line(body)], "/v1/completions", SETTINGS, AUTO)
    assert parsed.error_count == 0
    ((custom_id, request),) = parsed.requests
    assert custom_id == "a"
    assert (request.params.max_new_tokens, request.params.stop) == (7, ["\n"])
    assert (request.params.temperature, request.params.top_p) == (0.2, 0.5)
    assert request.fallback == "auto"


def test_chat_lines_become_chat_jobs() -> None:
    """Chat lines keep their messages (developer as system); max_completion_tokens wins
    over max_tokens; seed is kept."""
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    body = {"messages": messages, "max_tokens": 3, "max_completion_tokens": 9, "seed": 7}
    parsed = parse_lines(
        [line(body, url="/v1/chat/completions")], "/v1/chat/completions", SETTINGS, AUTO
    )
    ((_, request),) = parsed.requests
    assert request.prompt is None
    assert [(m.role, m.content) for m in request.messages or []] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]
    assert (request.params.max_new_tokens, request.params.seed) == (9, 7)


def test_a_refusing_batch_sets_fallback_none_unless_a_line_says_otherwise() -> None:
    """A batch policy of fallback "none" is every line's; a line's own fallback wins."""
    lines = [line({"prompt": "x"}, "a"), line({"prompt": "y", "fallback": "auto"}, "b")]
    parsed = parse_lines(lines, "/v1/completions", SETTINGS, BatchPolicy(fallback="none"))
    assert [r.fallback for _, r in parsed.requests] == ["none", "auto"]


def test_a_primary_only_batch_sets_failover_none_unless_a_line_says_otherwise() -> None:
    """A batch policy of failover "none" is every line's; a line's own failover wins,
    either way."""
    lines = [
        line({"prompt": "x"}, "a"),
        line({"prompt": "y", "failover": "auto"}, "b"),
        line({"prompt": "z", "failover": "none"}, "c"),
    ]
    parsed = parse_lines(lines, "/v1/completions", SETTINGS, BatchPolicy(failover="none"))
    assert [r.failover for _, r in parsed.requests] == ["none", "auto", "none"]
    parsed = parse_lines(lines, "/v1/completions", SETTINGS, AUTO)
    assert [r.failover for _, r in parsed.requests] == ["auto", "auto", "none"]


def test_settings_limits_are_line_errors_naming_the_parameter() -> None:
    """A prompt over GENQ_MAX_PROMPT_CHARS is an invalid_value of body.prompt on its line."""
    parsed = parse_lines([b"", line({"prompt": "x" * 101})], "/v1/completions", SETTINGS, AUTO)
    (error,) = parsed.errors
    assert (error.line, error.code, error.param) == (2, "invalid_value", "body.prompt")


def test_at_most_a_hundred_errors_are_listed_but_all_are_counted() -> None:
    """A file of 150 bad lines lists 100 errors and counts 150."""
    parsed = parse_lines([b"nope"] * 150, "/v1/completions", SETTINGS, AUTO)
    assert (len(parsed.errors), parsed.error_count) == (MAX_LISTED_ERRORS, 150)


def test_an_empty_file_is_an_error() -> None:
    """No request line at all fails the batch with empty_file."""
    parsed = parse_lines([b"", b"  "], "/v1/completions", SETTINGS, AUTO)
    assert [e.code for e in parsed.errors] == ["empty_file"]


def test_each_batch_message_carries_a_valid_job_message() -> None:
    """The payload in each built message validates as the JobMessage the worker reads,
    with the item's batch, line and custom_id."""
    parsed = parse_lines(
        [line({"prompt": "one"}, "c1"), line({"prompt": "two", "max_tokens": 5}, "c2")],
        "/v1/completions",
        SETTINGS,
        AUTO,
    )
    batch = BatchRecord(
        id="batch_x",
        owner="o",
        status="validating",
        endpoint="/v1/completions",
        input_file_id="f",
        completion_window="24h",
        output_file_id="o",
        error_file_id="e",
        times=BatchTimes(created_at=0),
        counts=BatchCounts(),
        sources=BatchSources(),
    )
    raw = list(_messages(TaskMessages(app, "batch"), batch, parsed.requests, "req-1"))
    jobs = []
    for message in raw:
        envelope = json.loads(message)
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        job = JobMessage.model_validate(args[0])
        assert envelope["headers"]["id"] == job.job_id
        jobs.append(job)
    assert [(j.batch.index, j.batch.custom_id) for j in jobs if j.batch] == [(0, "c1"), (1, "c2")]
    assert jobs[1].request.params.max_new_tokens == 5
    assert len({j.job_id for j in jobs}) == 2


def test_an_items_payload_is_what_the_worker_decodes() -> None:
    """The API puts each item's argument together as JSON (no model per item); the
    worker's JobMessage decodes exactly the message it was built from, a custom_id that
    needs escaping included."""
    request = GenerateRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "params": {"max_new_tokens": 8}}
    )
    item = BatchItem(
        batch_id="batch_x", index=3, custom_id='req "3"\\ ü', endpoint="/v1/chat/completions"
    )
    payload = batch_item_json("batch_req_x", request, item.model_dump(), "o" * 32)
    decoded = JobMessage.model_validate_json(payload)
    assert decoded == JobMessage(job_id="batch_req_x", request=request, batch=item, owner="o" * 32)


def test_item_i_is_the_ith_request_line_blank_lines_skipped() -> None:
    lines = [b'{"custom_id": "a"}', b"", b"  ", b'{"custom_id": "b"}', b"not json"]
    numbered = list(request_lines(lines))
    assert [n for n, _ in numbered] == [1, 4, 5]
    assert [custom_id_of(raw) for _, raw in numbered] == ["a", "b", None]
