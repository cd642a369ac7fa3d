"""The upstream simulator over real loopback HTTP: protocols, faults, control and the CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from simulator import ConfigError, SimulatorServer, simulated_text

TIMEOUT = (2.0, 5.0)


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


def hf(sim: SimulatorServer, prompt: str = "one two three", **params: Any) -> requests.Response:
    body = {"inputs": prompt, "parameters": {"return_full_text": False, **params}}
    return requests.post(f"{sim.url}/models/simulator/echo-1", json=body, timeout=TIMEOUT)


def tgi(sim: SimulatorServer, prompt: str = "one two three", **params: Any) -> requests.Response:
    body = {"inputs": prompt, "parameters": params}
    return requests.post(f"{sim.url}/generate", json=body, timeout=TIMEOUT)


def test_simulated_text_reverses_words_and_truncates() -> None:
    """simulated_text prefixes "simulated:" to the reversed words, at most max_new_tokens."""
    assert simulated_text("one two  three\nfour", 3) == "simulated: four three two"
    assert simulated_text("one two", 10) == "simulated: two one"
    assert simulated_text("one two", 0) == "simulated:"


def test_simulated_text_cuts_before_the_earliest_stop_string() -> None:
    """The text ends just before the earliest occurrence of any stop string."""
    assert simulated_text("a b c d", 10, stop=["b", "c"]) == "simulated: d "
    assert simulated_text("a b", 10, stop=["zzz", ""]) == "simulated: b a"


def test_hf_answers_a_list_with_generated_text(sim: SimulatorServer) -> None:
    """hf POST /models/{model with slash} answers [{"generated_text": simulated_text}]."""
    response = hf(sim, "the quick brown fox", max_new_tokens=2, temperature=0.7)
    assert response.status_code == 200
    assert response.json() == [{"generated_text": simulated_text("the quick brown fox", 2)}]


def test_hf_return_full_text_prepends_the_prompt(sim: SimulatorServer) -> None:
    """return_full_text=true puts the prompt before the generated text."""
    response = hf(sim, "a b", return_full_text=True)
    assert response.json() == [{"generated_text": "a b simulated: b a"}]


def test_tgi_answers_text_and_details(sim: SimulatorServer) -> None:
    """tgi POST /generate answers generated_text and TGI's details: reason, count, seed, tokens."""
    body = tgi(sim, "alpha beta gamma", max_new_tokens=5).json()
    details = body.pop("details")
    tokens = details.pop("tokens")
    assert body == {"generated_text": "simulated: gamma beta alpha"}
    assert details == {
        "finish_reason": "eos_token",
        "generated_tokens": 4,
        "seed": None,
        "prefill": [],
    }
    assert [t["text"] for t in tokens] == ["simulated:", " gamma", " beta", " alpha"]
    assert all(isinstance(t["id"], int) and t["special"] is False for t in tokens)
    assert all(t["logprob"] == 0.0 for t in tokens)


def test_compat_root_answers_a_list_with_details_only_when_asked(sim: SimulatorServer) -> None:
    """POST / (TGI's compat route) answers a one-item list; details only when asked for."""
    url, body = f"{sim.url}/", {"inputs": "a b", "parameters": {}, "stream": False}
    plain = requests.post(url, json=body, timeout=TIMEOUT).json()
    body["parameters"] = {"details": True, "decoder_input_details": True, "seed": 9}
    detailed = requests.post(url, json=body, timeout=TIMEOUT).json()
    assert plain == [{"generated_text": "simulated: b a"}]
    assert detailed[0]["details"]["seed"] == 9
    prefill = detailed[0]["details"]["prefill"]
    assert [(t["text"], t["logprob"]) for t in prefill] == [("a", None), (" b", 0.0)]


def test_hf_answers_details_when_asked(sim: SimulatorServer) -> None:
    """hf POST /models/{model} with details=true adds TGI's details to the list item."""
    [item] = hf(sim, "x y z", max_new_tokens=1, details=True).json()
    assert item["generated_text"] == "simulated: z"
    assert (item["details"]["finish_reason"], item["details"]["generated_tokens"]) == ("length", 2)


@pytest.mark.parametrize(
    ("prompt", "params", "tgi_reason", "openai_reason"),
    [
        ("a b c", {"max_new_tokens": 2}, "length", "length"),
        ("a b c", {"max_new_tokens": 3}, "eos_token", "stop"),
        ("a b c", {"max_new_tokens": 2, "stop": ["b"]}, "stop_sequence", "stop"),
        ("a b c", {"max_new_tokens": 9, "stop": ["zzz"]}, "eos_token", "stop"),
    ],
)
def test_finish_reason_says_what_ended_the_text(
    sim: SimulatorServer, prompt: str, params: dict[str, Any], tgi_reason: str, openai_reason: str
) -> None:
    """finish_reason is length when the token limit cut the text, else a stop or end of text."""
    details = tgi(sim, prompt, **params).json()["details"]
    chat = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": params["max_new_tokens"],
        "stop": params.get("stop"),
    }
    answer = requests.post(f"{sim.url}/v1/chat/completions", json=chat, timeout=TIMEOUT).json()
    assert details["finish_reason"] == tgi_reason
    assert answer["choices"][0]["finish_reason"] == openai_reason


def test_openai_answers_a_chat_completion_from_the_last_user_message(sim: SimulatorServer) -> None:
    """openai chat completions answer simulated_text of the last user message's content."""
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "second question here"},
    ]
    body = {"model": "gpt-sim", "messages": messages, "max_tokens": 2, "temperature": 0}
    response = requests.post(f"{sim.url}/v1/chat/completions", json=body, timeout=TIMEOUT)
    data = response.json()
    assert response.status_code == 200
    assert data["object"] == "chat.completion"
    assert data["model"] == "gpt-sim"
    assert isinstance(data["id"], str)
    assert isinstance(data["created"], int)
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "simulated: here question"},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert isinstance(data["system_fingerprint"], str)  # TGI's client requires it


def test_max_completion_tokens_wins_over_max_tokens(sim: SimulatorServer) -> None:
    """Chat max_completion_tokens, OpenAI's newer name, bounds the words over max_tokens."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "a b c d"}]}]
    body = {"messages": messages, "max_tokens": 3, "max_completion_tokens": 1, "seed": 4}
    data = requests.post(f"{sim.url}/v1/chat/completions", json=body, timeout=TIMEOUT).json()
    assert data["choices"][0]["message"]["content"] == "simulated: d"
    assert data["model"] == "simulator/echo-1"


def test_completions_answer_a_text_completion(sim: SimulatorServer) -> None:
    """POST /v1/completions answers text_completion choices with usage; echo prepends the prompt."""
    body = {"model": "m", "prompt": "one two three", "max_tokens": 2, "echo": True}
    data = requests.post(f"{sim.url}/v1/completions", json=body, timeout=TIMEOUT).json()
    assert (data["object"], data["model"]) == ("text_completion", "m")
    assert data["id"].startswith("cmpl-")
    assert data["choices"] == [
        {
            "text": "one two three simulated: three two",
            "index": 0,
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_completions_default_to_16_tokens(sim: SimulatorServer) -> None:
    """Without max_tokens, /v1/completions generates at most 16 words, as OpenAI's default."""
    prompt = " ".join(f"w{i}" for i in range(30))
    data = requests.post(f"{sim.url}/v1/completions", json={"prompt": prompt}, timeout=TIMEOUT)
    assert data.json()["choices"][0]["text"] == simulated_text(prompt, 16)


def test_chat_under_a_model_path_names_that_model(sim: SimulatorServer) -> None:
    """POST /models/{model}/v1/chat/completions answers a chat completion for that model."""
    body = {"model": "dummy", "messages": [{"role": "user", "content": "hi"}]}
    url = f"{sim.url}/models/org/m-1/v1/chat/completions"
    data = requests.post(url, json=body, timeout=TIMEOUT).json()
    assert (data["model"], data["choices"][0]["message"]["content"]) == ("org/m-1", "simulated: hi")


def test_stop_strings_cut_the_answer(sim: SimulatorServer) -> None:
    """A stop string in the request cuts the answer at its first occurrence."""
    assert tgi(sim, "a b c d", stop=["c"]).json()["generated_text"] == "simulated: d "


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/generate", b"{not json", 400),
        ("/generate", b'{"parameters": {}}', 400),
        ("/generate", b'{"inputs": 42}', 422),
        ("/generate", b'["a list"]', 422),
        ("/generate", b'{"inputs": "a", "parameters": {"max_new_tokens": "5"}}', 422),
        ("/models/m", b'{"inputs": "a", "stream": true}', 422),
        ("/models/m", b'{"inputs": "a", "parameters": {"temperature": 0}}', 422),
        ("/models/m", b'{"inputs": "a", "parameters": {"details": "yes"}}', 422),
        ("/v1/chat/completions", b'{"model": "m"}', 400),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 1}]}', 422),
        ("/v1/completions", b'{"model": "m"}', 400),
        ("/v1/completions", b'{"prompt": "a", "seed": -1}', 422),
    ],
)
def test_bad_requests_get_400_or_422(
    sim: SimulatorServer, path: str, body: bytes, status: int
) -> None:
    """Unreadable or missing fields answer 400, wrong types 422, in the protocol's error shape."""
    response = requests.post(f"{sim.url}{path}", data=body, timeout=TIMEOUT)
    error = response.json()
    assert response.status_code == status
    if path.startswith("/v1/"):
        assert isinstance(error["error"]["message"], str)
        assert error["error"]["type"] == "invalid_request_error"
        assert set(error["error"]) == {"message", "type", "param", "code"}
    elif path.startswith("/models/"):
        assert set(error) == {"error"} and isinstance(error["error"], str)
    else:
        assert isinstance(error["error"], str) and error["error_type"] == "validation"


def test_unknown_path_is_404(sim: SimulatorServer) -> None:
    """A path that no protocol or control endpoint owns answers 404."""
    assert requests.post(f"{sim.url}/nope", json={}, timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{sim.url}/generate", timeout=TIMEOUT).status_code == 404


def test_health_answers_ok(sim: SimulatorServer) -> None:
    """GET /_sim/health answers {"ok": true}."""
    assert requests.get(f"{sim.url}/_sim/health", timeout=TIMEOUT).json() == {"ok": True}


def test_outage_mode_answers_503_without_estimated_time(sim: SimulatorServer) -> None:
    """Mode outage answers 503 with an error and no estimated_time."""
    sim.configure(mode="outage")
    response = hf(sim)
    assert response.status_code == 503
    assert response.json() == {"error": "Service Unavailable (simulated outage)"}


def test_rate_limit_mode_answers_429_with_retry_after(sim: SimulatorServer) -> None:
    """Mode rate_limit answers 429 with Retry-After: HF's body on hf, TGI's overloaded on tgi."""
    sim.configure(mode="rate_limit", retry_after_s=3)
    on_tgi, on_hf = tgi(sim), hf(sim)
    assert (on_tgi.status_code, on_hf.status_code) == (429, 429)
    assert on_tgi.headers["Retry-After"] == on_hf.headers["Retry-After"] == "3"
    assert on_tgi.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
    assert on_hf.json() == {"error": "Rate limit reached"}


def test_loading_mode_answers_503_with_estimated_time(sim: SimulatorServer) -> None:
    """Mode loading answers 503 naming the model, with estimated_time."""
    sim.configure(mode="loading", estimated_time_s=7.5)
    response = hf(sim)
    assert response.status_code == 503
    assert response.json() == {
        "error": "Model simulator/echo-1 is currently loading",
        "estimated_time": 7.5,
    }


def test_hang_mode_makes_the_client_time_out(sim: SimulatorServer) -> None:
    """Mode hang holds the answer for hang_s, so a shorter client read timeout fires."""
    sim.configure(mode="hang", hang_s=2.0)
    with pytest.raises(requests.ReadTimeout):
        requests.post(f"{sim.url}/generate", json={"inputs": "a"}, timeout=(2.0, 0.2))


def test_down_mode_drops_the_connection(sim: SimulatorServer) -> None:
    """Mode down closes the connection without answering: the client sees ConnectionError."""
    sim.configure(mode="down")
    with pytest.raises(requests.ConnectionError):
        tgi(sim)


OPENAI_500 = {"message": "The server had an error (simulated)", "type": "server_error"}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/models/m", {"error": "Internal Server Error (simulated)"}),
        (
            "/generate",
            {"error": "Incomplete generation (simulated)", "error_type": "incomplete_generation"},
        ),
        (
            "/",
            {"error": "Incomplete generation (simulated)", "error_type": "incomplete_generation"},
        ),
        ("/v1/chat/completions", {"error": {**OPENAI_500, "param": None, "code": None}}),
        ("/v1/completions", {"error": {**OPENAI_500, "param": None, "code": None}}),
    ],
)
def test_a_500_is_shaped_as_each_service_sends_it(
    sim: SimulatorServer, path: str, expected: dict[str, object]
) -> None:
    """A simulated 500 is HF's {"error"}, TGI's {"error", "error_type"} or OpenAI's error object."""
    sim.configure(error_rate=1.0)
    body = {"inputs": "a", "prompt": "a", "messages": [{"role": "user", "content": "a"}]}
    response = requests.post(f"{sim.url}{path}", json=body, timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (500, expected)


def test_openai_errors_carry_type_and_code(sim: SimulatorServer) -> None:
    """On /v1 routes, 401, 429 and 503 answer OpenAI error objects with their type and code."""
    url, body = f"{sim.url}/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}]}
    sim.configure(script=[{"status": 401}, {"status": 429, "retry_after": 2}, {"status": 503}])
    errors = [requests.post(url, json=body, timeout=TIMEOUT) for _ in range(3)]
    found = [(r.status_code, r.json()["error"]["type"], r.json()["error"]["code"]) for r in errors]
    assert found == [
        (401, "invalid_request_error", "invalid_api_key"),
        (429, "requests", "rate_limit_exceeded"),
        (503, "server_error", None),
    ]
    assert errors[1].headers["Retry-After"] == "2"


def test_loading_body_is_hf_s_on_every_route(sim: SimulatorServer) -> None:
    """Mode loading answers HF's {"error", "estimated_time"} on chat routes too."""
    sim.configure(mode="loading", estimated_time_s=3)
    body = {"model": "gpt-sim", "messages": [{"role": "user", "content": "a"}]}
    response = requests.post(f"{sim.url}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert response.status_code == 503
    assert response.json() == {"error": "Model gpt-sim is currently loading", "estimated_time": 3.0}


def test_context_limit_refuses_chat_as_llama_cpp_does(sim: SimulatorServer) -> None:
    """Over max_context_tokens, chat answers the recorded 400 context_length_exceeded body."""
    sim.configure(max_context_tokens=10)
    body = {"messages": [{"role": "user", "content": "x " * 7}], "max_tokens": 8}
    response = requests.post(f"{sim.url}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "This model's maximum context length is 10 tokens. However, you requested "
            "15 tokens (7 in the messages, 8 in the completion). Please reduce the length of the "
            "messages or completion.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    assert sim.stats()["by_outcome"] == {"error_400": 1}


def test_context_limit_refuses_completions_and_tgi_in_their_words(sim: SimulatorServer) -> None:
    """Completions get the recorded completion wording; tgi and hf get TGI's 422 validation."""
    sim.configure(max_context_tokens=4)
    completion = {"prompt": "a b c", "max_tokens": 2}
    refused = requests.post(f"{sim.url}/v1/completions", json=completion, timeout=TIMEOUT)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "This model's maximum context length is 4 tokens, however you requested 5 tokens "
        "(3 in your prompt; 2 for the completion). Please reduce your prompt; or completion length."
    )
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    expected = {
        "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4. "
        "Given: 3 `inputs` tokens and 2 `max_new_tokens`",
        "error_type": "validation",
    }
    for response in (tgi(sim, "a b c", max_new_tokens=2), hf(sim, "a b c", max_new_tokens=2)):
        assert (response.status_code, response.json()) == (422, expected)
    assert tgi(sim, "a b", max_new_tokens=2).status_code == 200  # 4 tokens fit


def test_redirect_mode_redirects_once_to_the_same_path(sim: SimulatorServer) -> None:
    """Mode redirect answers 307 to the same path, marked; the marked call is answered normally."""
    sim.configure(mode="redirect")
    url, body = f"{sim.url}/generate?x=1", {"inputs": "a b"}
    first = requests.post(url, json=body, timeout=TIMEOUT, allow_redirects=False)
    assert (first.status_code, first.content) == (307, b"")
    assert first.headers["Location"] == "/generate?x=1&_sim_redirected=1"
    followed = requests.post(url, json=body, timeout=TIMEOUT)  # requests follows 307
    assert (followed.status_code, followed.json()["generated_text"]) == (200, "simulated: b a")
    assert followed.history[0].status_code == 307
    assert sim.stats()["calls"] == 3
    assert sim.stats()["by_outcome"] == {"redirect_307": 2, "ok": 1}


def test_redirect_status_308_and_script_redirect_steps(sim: SimulatorServer) -> None:
    """redirect_status=308 sets the mode's status; a scripted 3xx step redirects to the same URL."""
    sim.configure(mode="redirect", redirect_status=308)
    response = hf(sim)
    assert (response.status_code, response.history[0].status_code) == (200, 308)
    sim.configure(mode="ok", script=[{"status": 307}, {"status": 500}])
    url = f"{sim.url}/v1/completions"
    step = requests.post(url, json={"prompt": "a"}, timeout=TIMEOUT, allow_redirects=False)
    assert (step.status_code, step.headers["Location"]) == (307, "/v1/completions")
    assert requests.post(url, json={"prompt": "a"}, timeout=TIMEOUT).status_code == 500


@pytest.mark.parametrize(
    "changes",
    [
        {"redirect_status": 302},
        {"redirect_status": True},
        {"max_context_tokens": 0},
        {"max_context_tokens": "8"},
    ],
)
def test_config_rejects_bad_redirect_status_and_context_limit(
    sim: SimulatorServer, changes: dict[str, object]
) -> None:
    """redirect_status must be 307 or 308, max_context_tokens a positive integer or null."""
    with pytest.raises(ConfigError, match=next(iter(changes))):
        sim.configure(**changes)


def test_script_steps_are_consumed_in_order_then_normal_answers_resume(
    sim: SimulatorServer,
) -> None:
    """Scripted steps answer the next calls in order, before the mode; then calls are normal."""
    sim.configure(
        script=[
            {"status": 429, "retry_after": 1},
            {"status": 503, "estimated_time": 4},
            {"status": 200},
            {"status": 500},
        ]
    )
    first, second, third, fourth, fifth = (tgi(sim, "x y") for _ in range(5))
    assert (first.status_code, first.headers["Retry-After"]) == (429, "1")
    assert (second.status_code, second.json()["estimated_time"]) == (503, 4.0)
    assert third.json()["generated_text"] == "simulated: y x"
    assert fourth.status_code == 500
    assert fifth.status_code == 200
    assert sim.stats()["config"]["script"] == []  # type: ignore[index]


def test_script_step_body_is_sent_verbatim(sim: SimulatorServer) -> None:
    """A step's body replaces the answer, so a 200 can carry a malformed payload."""
    sim.configure(script=[{"status": 200, "body": {"unexpected": True}}])
    response = hf(sim)
    assert (response.status_code, response.json()) == (200, {"unexpected": True})


def test_error_rate_one_answers_500(sim: SimulatorServer) -> None:
    """error_rate=1.0 answers every call 500."""
    sim.configure(error_rate=1.0)
    assert [hf(sim).status_code for _ in range(3)] == [500, 500, 500]


def test_error_rate_is_reproducible_for_a_seed(sim: SimulatorServer) -> None:
    """The same seed gives the same sequence of 500s and 200s."""
    sim.configure(error_rate=0.5, seed=7)
    first = [tgi(sim).status_code for _ in range(20)]
    sim.configure(seed=7)
    again = [tgi(sim).status_code for _ in range(20)]
    assert first == again
    assert {200, 500} == set(first)


def test_fault_rates_mix_faults_in_their_proportions(sim: SimulatorServer) -> None:
    """Each fault of ``fault_rates`` answers about its share of calls, as its mode would."""
    sim.configure(
        fault_rates={"rate_limit": 0.2, "loading": 0.1, "outage": 0.1}, retry_after_s=2, seed=3
    )
    answers = [tgi(sim) for _ in range(400)]
    by_status = Counter(a.status_code for a in answers)
    assert 60 <= by_status[429] <= 100  # 20% of 400
    assert 50 <= by_status[503] <= 110  # loading + outage: 20%
    assert 180 <= by_status[200] <= 300
    assert all(a.headers["Retry-After"] == "2" for a in answers if a.status_code == 429)
    loading = [a for a in answers if a.status_code == 503 and "estimated_time" in a.json()]
    assert 20 <= len(loading) <= 70


@pytest.mark.parametrize(
    "rates",
    [{"ok": 0.1}, {"hang": 1.5}, {"hang": 0.6, "down": 0.6}, ["hang"], {"hang": "0.1"}],
)
def test_bad_fault_rates_are_refused(sim: SimulatorServer, rates: object) -> None:
    """Not a fault mode, not a fraction, more than all calls, not an object: refused."""
    with pytest.raises(ConfigError, match="fault_rates"):
        sim.configure(fault_rates=rates)
    assert sim.stats()["config"]["fault_rates"] == {}  # type: ignore[index]


def test_stats_count_every_generation_call_by_outcome(sim: SimulatorServer) -> None:
    """Stats count each protocol call once, whatever its outcome; control calls not at all."""
    hf(sim)
    tgi(sim)
    sim.configure(script=[{"status": 500}, {"status": 429}])
    hf(sim)
    tgi(sim)
    requests.post(f"{sim.url}/generate", data=b"{", timeout=TIMEOUT)
    stats = requests.get(f"{sim.url}/_sim/stats", timeout=TIMEOUT).json()
    assert stats["calls"] == 5
    assert stats["by_outcome"] == {"ok": 2, "error_500": 1, "error_429": 1, "error_400": 1}
    assert stats["config"]["mode"] == "ok"
    gauges = ("in_flight", "peak_in_flight", "waiting", "peak_concurrent", "over_capacity")
    assert [stats[key] for key in gauges] == [0, 1, 0, 1, 0]  # one call at a time, no capacity


def test_stats_count_prompts_asked_again_and_asked_twice_at_once(sim: SimulatorServer) -> None:
    """``repeated``: calls whose prompt was asked before; ``overlapping``: calls whose
    prompt another open call is asking (two copies of one job at once)."""
    hf(sim, "first")
    hf(sim, "first")
    tgi(sim, "second")
    assert (sim.stats()["repeated"], sim.stats()["overlapping"]) == (1, 0)
    sim.configure(latency_ms=300)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: hf(sim, "third"), range(2)))
    assert (sim.stats()["repeated"], sim.stats()["overlapping"]) == (2, 1)


def test_require_token_rejects_other_tokens_with_401(sim: SimulatorServer) -> None:
    """With require_token set, a missing or different bearer token gets 401; the right one 200."""
    sim.configure(require_token="s3cret")
    url, body = f"{sim.url}/generate", {"inputs": "a"}
    missing = requests.post(url, json=body, timeout=TIMEOUT)
    wrong = requests.post(url, json=body, headers={"Authorization": "Bearer no"}, timeout=TIMEOUT)
    right = requests.post(
        url, json=body, headers={"Authorization": "Bearer s3cret"}, timeout=TIMEOUT
    )
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert wrong.json() == {"error": "Authorization header is correct, but the token seems invalid"}


def test_latency_delays_each_call_by_at_least_latency_ms(sim: SimulatorServer) -> None:
    """latency_ms=150 makes a call take at least 0.15 s."""
    sim.configure(latency_ms=150)
    started = time.perf_counter()
    assert tgi(sim).status_code == 200
    assert time.perf_counter() - started >= 0.15


def test_keep_alive_calls_do_not_stall(sim: SimulatorServer) -> None:
    """50 sequential calls on one keep-alive session finish well under 1 s (no Nagle stall)."""
    with requests.Session() as session:
        session.post(f"{sim.url}/generate", json={"inputs": "warm up"}, timeout=TIMEOUT)
        started = time.perf_counter()
        for _ in range(50):
            response = session.post(f"{sim.url}/generate", json={"inputs": "a b"}, timeout=TIMEOUT)
            assert response.status_code == 200
        elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"50 keep-alive calls took {elapsed:.2f} s"


def test_config_endpoint_merges_fields_and_rejects_bad_ones(sim: SimulatorServer) -> None:
    """POST /_sim/config merges the given fields; an unknown or mistyped field answers 400."""
    url = f"{sim.url}/_sim/config"
    config = requests.post(url, json={"latency_ms": 5}, timeout=TIMEOUT).json()
    config = requests.post(url, json={"mode": "outage"}, timeout=TIMEOUT).json()
    assert (config["latency_ms"], config["mode"], config["hang_s"]) == (5.0, "outage", 30.0)
    bad: list[dict[str, object]] = [
        {"colour": "red"},
        {"error_rate": 2},
        {"mode": "sleepy"},
        {"script": [{}]},
    ]
    assert [requests.post(url, json=b, timeout=TIMEOUT).status_code for b in bad] == [400] * 4
    assert sim.stats()["config"] == config


def test_configure_in_process_raises_config_error(sim: SimulatorServer) -> None:
    """SimulatorServer.configure raises ConfigError for a bad value and changes nothing."""
    with pytest.raises(ConfigError, match="latency_ms"):
        sim.configure(mode="outage", latency_ms=-1)
    assert sim.stats()["config"]["mode"] == "ok"  # type: ignore[index]


def test_reset_restores_defaults_and_zeroes_counters(sim: SimulatorServer) -> None:
    """POST /_sim/reset puts the default config back and zeroes the counters."""
    sim.configure(mode="outage", script=[{"status": 500}])
    tgi(sim)
    config = requests.post(f"{sim.url}/_sim/reset", timeout=TIMEOUT).json()
    assert (config["mode"], config["script"]) == ("ok", [])
    assert (sim.stats()["calls"], sim.stats()["by_outcome"]) == (0, {})


def test_stop_closes_open_keep_alive_connections() -> None:
    """After stop(), a session's pooled connection no longer gets answers."""
    server = SimulatorServer().start()
    with requests.Session() as session:
        assert session.post(f"{server.url}/generate", json={"inputs": "a"}, timeout=TIMEOUT).ok
        server.stop()
        with pytest.raises(requests.ConnectionError):
            session.post(f"{server.url}/generate", json={"inputs": "a"}, timeout=TIMEOUT)


def test_cli_serves_until_sigterm_and_exits_0() -> None:
    """python -m simulator prints its URL, answers on it, and exits 0 on SIGTERM."""
    cmd = [sys.executable, "-m", "simulator", "--port", "0"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("genq upstream simulator (not a model) listening on http://")
        url = line.rsplit(" ", 1)[1].strip()
        assert requests.get(f"{url}/_sim/health", timeout=TIMEOUT).json() == {"ok": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
