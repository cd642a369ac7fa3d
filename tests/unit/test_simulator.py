"""The upstream simulator over real loopback HTTP: protocols, faults, control and the CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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
    """tgi POST /generate answers generated_text and details with the token count."""
    body = tgi(sim, "alpha beta gamma", max_new_tokens=5).json()
    assert body == {
        "generated_text": "simulated: gamma beta alpha",
        "details": {"finish_reason": "length", "generated_tokens": 4},
    }


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
            "finish_reason": "stop",
        }
    ]
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


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
        ("/models/m", b'{"inputs": "a", "parameters": {"temperature": 0}}', 422),
        ("/v1/chat/completions", b'{"model": "m"}', 400),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 1}]}', 422),
    ],
)
def test_bad_requests_get_400_or_422(
    sim: SimulatorServer, path: str, body: bytes, status: int
) -> None:
    """Unreadable or missing fields answer 400 and wrong types 422, with an error message."""
    response = requests.post(f"{sim.url}{path}", data=body, timeout=TIMEOUT)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)


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
    """Mode rate_limit answers 429 with Retry-After set to retry_after_s."""
    sim.configure(mode="rate_limit", retry_after_s=3)
    response = tgi(sim)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json() == {"error": "Rate limit reached"}


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
