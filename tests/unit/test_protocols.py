"""worker.protocols and worker.upstream against recorded real answers and a local HTTP
server: routes per protocol and job kind, parameters, usage, finish_reason, redirects,
and errors as each service sends them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pytest_httpserver import HTTPServer
from werkzeug import Response

from core.contract import ChatMessage, ContextDoc, GenerateRequest, GenerationParams
from core.errors import UpstreamRejected, UpstreamUnavailable
from core.settings import Protocol
from worker.protocols import build_request, parse_response
from worker.upstream import UpstreamTarget, classify, generate

RECORDED = Path(__file__).parents[1] / "fixtures" / "recorded"
CASES = {
    case["name"]: case
    for case in json.loads(
        (RECORDED / "openai-compatible-llama-cpp-python-0.3.36.json").read_text()
    )
}
PARAMS = GenerationParams(max_new_tokens=8, temperature=0.0, top_p=1.0, stop=["\n"], seed=42)
CHAT = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]


def target(base: str, protocol: Protocol, route: Any = None) -> UpstreamTarget:
    return UpstreamTarget(protocol, base, "m", SecretStr("tok-123456"), 1.0, 5.0, route)


@pytest.fixture
def base(httpserver: HTTPServer) -> str:
    return httpserver.url_for("/").rstrip("/")


# --- routes and bodies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "route", "chat", "path"),
    [
        ("openai", None, False, "/v1/chat/completions"),
        ("openai", "completions", False, "/v1/completions"),
        ("openai", None, True, "/v1/chat/completions"),
        ("tgi", None, False, "/generate"),
        ("tgi", "chat", False, "/v1/chat/completions"),
        ("tgi", None, True, "/v1/chat/completions"),
        ("hf", None, False, "/models/m"),
        ("hf", "chat", True, "/models/m"),
    ],
)
def test_each_protocol_sends_each_job_kind_to_its_route(
    protocol: Protocol, route: Any, chat: bool, path: str
) -> None:
    """Prompt and chat jobs go where the protocol table says."""
    request = GenerateRequest(messages=CHAT) if chat else GenerateRequest(prompt="Hi")
    wire = build_request(
        protocol, "http://h/v1" if protocol == "openai" else "http://h", "m", request, route
    )
    assert wire.url == f"http://h{path}"


def test_openai_bodies_carry_the_services_own_parameter_names() -> None:
    """max_tokens, stop, seed, temperature, top_p on OpenAI routes; a prompt as one user
    message on chat."""
    wire = build_request("openai", "http://h", "m", GenerateRequest(prompt="Hi", params=PARAMS))
    assert wire.body == {
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 8,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": ["\n"],
        "seed": 42,
    }
    completions = build_request(
        "openai", "http://h", "m", GenerateRequest(prompt="Hi", params=PARAMS), "completions"
    )
    assert completions.body["prompt"] == "Hi"


def test_text_generation_bodies_use_max_new_tokens_and_render_chat() -> None:
    """hf gets max_new_tokens, seed and stop, and a chat job's messages as one prompt."""
    wire = build_request("hf", "http://h", "m", GenerateRequest(messages=CHAT, params=PARAMS))
    assert wire.body["inputs"] == "system: Be brief.\nuser: Hi\nassistant:"
    assert wire.body["parameters"]["max_new_tokens"] == 8
    assert (wire.body["parameters"]["seed"], wire.body["parameters"]["stop"]) == (42, ["\n"])


def test_context_documents_reach_the_model_with_their_ids() -> None:
    """A job's context is in what is sent (here as a system message), ids and all."""
    docs = [ContextDoc(id="runbook-7", text="Serve cached answers.")]
    wire = build_request("openai", "http://h", "m", GenerateRequest(messages=CHAT, context=docs))
    system = wire.body["messages"][0]
    assert system["role"] == "system"
    assert "[runbook-7]" in system["content"] and "Serve cached answers." in system["content"]


# --- recorded real answers ------------------------------------------------------------


@pytest.mark.parametrize(("name", "route"), [("completion_ok", "completions"), ("chat_ok", "chat")])
def test_recorded_answers_parse_with_usage_and_finish_reason(name: str, route: Any) -> None:
    """A real OpenAI-compatible server's answers give text, usage and finish_reason."""
    body = CASES[name]["json"]
    answer = parse_response(route, body, "openai m")
    choice = body["choices"][0]
    assert answer.text == (
        choice["text"] if route == "completions" else choice["message"]["content"]
    )
    assert answer.usage == body["usage"]
    assert answer.finish_reason == choice["finish_reason"]


def test_tgi_finish_reasons_read_as_openai_ones() -> None:
    """TGI eos_token and stop_sequence read as stop, length as length; prefill = prompt tokens."""
    body = {
        "generated_text": "x",
        "details": {
            "finish_reason": "eos_token",
            "generated_tokens": 2,
            "prefill": [{"id": 1}, {"id": 2}, {"id": 3}],
        },
    }
    answer = parse_response("text_generation", body, "tgi m")
    assert (answer.finish_reason, answer.usage) == (
        "stop",
        {"completion_tokens": 2, "prompt_tokens": 3},
    )
    length = {"generated_text": "x", "details": {"finish_reason": "length"}}
    assert parse_response("text_generation", [length], "hf m").finish_reason == "length"


@pytest.mark.parametrize("name", ["completion_prompt_too_long", "chat_prompt_too_long"])
def test_a_recorded_context_length_error_is_a_rejection_with_its_message(name: str) -> None:
    """A 400 context_length_exceeded fails at once (not transient), quoting the upstream."""
    case = CASES[name]
    error = classify(
        case["status"], case["headers"], json.dumps(case["json"]), None, origin="openai m"
    )
    assert isinstance(error, UpstreamRejected) and not error.transient
    assert "context_length_exceeded" in error.message
    assert "maximum context length" in error.message


def test_a_recorded_500_is_transient_with_its_message() -> None:
    """A 500 (llama_decode returned 1) is UpstreamUnavailable, quoting the upstream."""
    case = CASES["completion_ctx_edge_decode_error"]
    error = classify(500, case["headers"], json.dumps(case["json"]), None)
    assert isinstance(error, UpstreamUnavailable) and error.transient
    assert "llama_decode returned 1" in error.message


def test_tgi_and_hf_error_bodies_give_their_message_and_kind() -> None:
    """TGI's {error, error_type} and HF's {error, estimated_time} reach the message."""
    tgi = classify(
        422, {}, json.dumps({"error": "Input validation error", "error_type": "validation"}), None
    )
    assert "validation: Input validation error" in tgi.message
    hf = classify(
        503, {}, json.dumps({"error": "Model m is currently loading", "estimated_time": 20.0}), None
    )
    assert isinstance(hf, UpstreamUnavailable) and hf.retry_after == 20.0
    assert "currently loading" in hf.message


# --- redirects ------------------------------------------------------------------------


def test_a_redirect_is_followed_keeping_the_post(httpserver: HTTPServer, base: str) -> None:
    """A 307 to another path is followed with the same POST body; the answer is used."""
    httpserver.expect_request("/generate", method="POST").respond_with_response(
        Response(status=307, headers={"Location": "/v2/generate"})
    )
    httpserver.expect_request(
        "/v2/generate",
        method="POST",
        json=build_request("tgi", base, "m", GenerateRequest(prompt="Hi")).body,
    ).respond_with_json({"generated_text": "moved"})
    assert generate(target(base, "tgi"), GenerateRequest(prompt="Hi")).text == "moved"


def test_endless_redirects_are_unavailable_not_rejected(httpserver: HTTPServer, base: str) -> None:
    """A redirect loop ends as a transient UpstreamUnavailable, never a rejection."""
    httpserver.expect_request("/generate").respond_with_response(
        Response(status=308, headers={"Location": "/generate"})
    )
    with pytest.raises(UpstreamUnavailable) as caught:
        generate(target(base, "tgi"), GenerateRequest(prompt="Hi"))
    assert caught.value.transient


def test_a_3xx_that_cannot_be_followed_is_unavailable() -> None:
    """A 3xx answer itself (no Location) is transient, not a 4xx-style rejection."""
    assert isinstance(classify(302, {}, "", None), UpstreamUnavailable)
