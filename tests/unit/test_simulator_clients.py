"""The simulator as the official clients see it: huggingface_hub, text_generation and openai.

Each client talks to a SimulatorServer on a free loopback port (no Redis). Success: every
client call on every route form parses the answer. Faults: each call either parses the
answer (redirects) or raises that client's own error class; where a client does not wrap
transport failures (huggingface_hub and text_generation on timeouts and dropped
connections), the table says what it lets through from ``requests``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import huggingface_hub.errors as hf_errors
import openai
import pytest
import requests
import text_generation  # type: ignore[import-untyped]
import text_generation.errors as tgi_errors  # type: ignore[import-untyped]
from huggingface_hub import InferenceClient

from simulator import SimulatorServer, simulated_text

TIMEOUT_S = 0.4  # the clients' timeout in fault tests; the timeout fault answers after LATE_MS
LATE_MS = 1000
SLACK_S = 5.0  # the clients' timeout in success tests
TOKEN = "sim-token"
PROMPT = "one two three"
MESSAGES = [{"role": "user", "content": "one two three four"}]
ChatOut = tuple[str | None, str | None, dict[str, int]]  # content, finish_reason, usage


pytestmark = pytest.mark.filterwarnings(  # text_generation 0.7 calls pydantic's .dict()
    "ignore::DeprecationWarning:text_generation.client"
)


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    """One simulator for the module: stopping one takes up to its 50 ms poll interval."""
    with SimulatorServer() as running:
        yield running


@pytest.fixture
def sim(server: SimulatorServer) -> Iterator[SimulatorServer]:
    """The module's simulator with default configuration and zero counters."""
    server.reset()
    yield server
    server.reset()


def hf(url: str, form: str, timeout: float = SLACK_S) -> InferenceClient:
    """An InferenceClient given the server's URL as ``model`` or as ``base_url``."""
    if form == "model":
        return InferenceClient(model=url, api_key=TOKEN, timeout=timeout)
    return InferenceClient(base_url=url, api_key=TOKEN, timeout=timeout)


def tgi(url: str, timeout: float = SLACK_S) -> Any:
    """TGI's own client (untyped) for a server URL, sending the bearer token."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return text_generation.Client(url, headers=headers, timeout=timeout)


def oai(url: str, timeout: float = SLACK_S) -> openai.OpenAI:
    """The openai client for the server's /v1, without its retries."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=timeout)


# --- success: every call on every route form -------------------------------------------

TEXT_CALLS: dict[str, Callable[[str], str]] = {
    "hf.text_generation model=URL (POST /)": lambda url: hf(url, "model").text_generation(
        PROMPT, max_new_tokens=2
    ),
    "hf.text_generation base_url=URL (POST /)": lambda url: hf(url, "base").text_generation(
        PROMPT, max_new_tokens=2
    ),
    "hf.text_generation model=URL/models/m (POST /models/m)": lambda url: hf(
        f"{url}/models/org/m", "model"
    ).text_generation(PROMPT, max_new_tokens=2),
    "tgi.Client(URL).generate (POST /)": lambda url: (
        tgi(url).generate(PROMPT, max_new_tokens=2).generated_text
    ),
    "tgi.Client(URL/models/m).generate (POST /models/m)": lambda url: (
        tgi(f"{url}/models/org/m").generate(PROMPT, max_new_tokens=2).generated_text
    ),
    "openai.completions.create (POST /v1/completions)": lambda url: (
        oai(url).completions.create(model="m", prompt=PROMPT, max_tokens=2).choices[0].text
    ),
}


@pytest.mark.parametrize("call", TEXT_CALLS)
def test_text_generation_calls_parse_the_answer(sim: SimulatorServer, call: str) -> None:
    """Each client's text-generation call on each route form returns the simulated text."""
    assert TEXT_CALLS[call](sim.url) == simulated_text(PROMPT, 2)
    assert sim.stats()["by_outcome"] == {"ok": 1}


@pytest.mark.parametrize("form", ["model", "base"])
def test_hf_text_generation_details_parse(sim: SimulatorServer, form: str) -> None:
    """InferenceClient.text_generation(details=True) parses TGI's details, prefill included."""
    out = hf(sim.url, form).text_generation(
        PROMPT, max_new_tokens=2, details=True, decoder_input_details=True, seed=5
    )
    assert out.generated_text == "simulated: three two"
    assert out.details is not None
    assert (out.details.finish_reason, out.details.generated_tokens) == ("length", 3)
    assert out.details.seed == 5
    assert [t.text for t in out.details.prefill] == ["one", " two", " three"]
    assert [t.text for t in out.details.tokens] == ["simulated:", " three", " two"]


def test_tgi_generate_details_validate(sim: SimulatorServer) -> None:
    """text_generation.Client.generate validates the details (stop_sequence when a stop cuts)."""
    out = tgi(sim.url).generate(PROMPT, max_new_tokens=5, stop_sequences=["one"], seed=2)
    assert out.generated_text == "simulated: three two "
    assert out.details.finish_reason == text_generation.types.FinishReason.StopSequence
    assert (out.details.generated_tokens, out.details.seed) == (3, 2)
    assert [t.text for t in out.details.tokens] == ["simulated:", " three", " two"]


def _chat(answer: Any) -> ChatOut:
    usage = answer.usage if isinstance(answer.usage, dict) else vars(answer.usage)
    counts = {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    choice = answer.choices[0]
    return choice.message.content, choice.finish_reason, counts


CHAT_CALLS: dict[str, Callable[[str], ChatOut]] = {
    "hf.chat_completion model=URL (POST /v1/chat/completions)": lambda url: _chat(
        hf(url, "model").chat_completion(MESSAGES, max_tokens=2)
    ),
    "hf.chat_completion base_url=URL (POST /v1/chat/completions)": lambda url: _chat(
        hf(url, "base").chat_completion(MESSAGES, max_tokens=2)
    ),
    "hf.chat_completion base_url=URL/v1 (POST /v1/chat/completions)": lambda url: _chat(
        hf(f"{url}/v1", "base").chat_completion(MESSAGES, max_tokens=2)
    ),
    "hf.chat_completion model=URL/models/m (POST /models/m/v1/chat/completions)": lambda url: _chat(
        hf(f"{url}/models/org/m", "model").chat_completion(MESSAGES, max_tokens=2)
    ),
    "tgi.Client(URL).chat (POST /v1/chat/completions)": lambda url: _chat(
        tgi(url).chat(MESSAGES, max_tokens=2, seed=1)
    ),
    "openai.chat.completions.create max_tokens": lambda url: _chat(
        oai(url).chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    ),
    "openai.chat.completions.create max_completion_tokens": lambda url: _chat(
        oai(url).chat.completions.create(
            model="m",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_completion_tokens=2,
            stop=["zzz"],
            seed=3,
            temperature=0,
            top_p=1,
        )
    ),
}


@pytest.mark.parametrize("call", CHAT_CALLS)
def test_chat_calls_parse_the_answer(sim: SimulatorServer, call: str) -> None:
    """Each client's chat call on each route form parses content, finish_reason and usage."""
    content, finish, usage = CHAT_CALLS[call](sim.url)
    assert (content, finish) == ("simulated: four three", "length")
    assert usage == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


# --- faults: each call parses or raises its client's own error --------------------------


@dataclass(frozen=True)
class Client:
    """One client call on one route form, and which column of EXPECTED it reads."""

    group: str
    call: Callable[[str], object]


FAULT_CALLS: dict[str, Client] = {  # short timeouts, for the timeout fault
    "hf.text_generation model=URL": Client(
        "hf_text", lambda url: hf(url, "model", TIMEOUT_S).text_generation(PROMPT)
    ),
    "hf.text_generation base_url=URL": Client(
        "hf_text", lambda url: hf(url, "base", TIMEOUT_S).text_generation(PROMPT)
    ),
    "hf.chat_completion model=URL": Client(
        "hf_chat", lambda url: hf(url, "model", TIMEOUT_S).chat_completion(MESSAGES)
    ),
    "hf.chat_completion base_url=URL": Client(
        "hf_chat", lambda url: hf(url, "base", TIMEOUT_S).chat_completion(MESSAGES)
    ),
    "tgi.generate": Client("tgi_generate", lambda url: tgi(url, TIMEOUT_S).generate(PROMPT)),
    "tgi.chat": Client("tgi_chat", lambda url: tgi(url, TIMEOUT_S).chat(MESSAGES)),
    "openai.completions": Client(
        "openai",
        lambda url: oai(url, TIMEOUT_S).completions.create(model="m", prompt=PROMPT),
    ),
    "openai.chat": Client(
        "openai",
        lambda url: oai(url, TIMEOUT_S).chat.completions.create(
            model="m",
            messages=MESSAGES,  # type: ignore[arg-type]
        ),
    ),
}

FAULTS: dict[str, dict[str, Any]] = {
    "500": {"error_rate": 1.0},
    "429+Retry-After": {"mode": "rate_limit", "retry_after_s": 2},
    "503 loading": {"mode": "loading", "estimated_time_s": 7.5},
    "503 outage": {"mode": "outage"},
    "down": {"mode": "down"},
    "timeout": {"latency_ms": LATE_MS},
    "context_length_exceeded": {"max_context_tokens": 3},
    "307 redirect": {"mode": "redirect"},
    "308 redirect": {"mode": "redirect", "redirect_status": 308},
    "401": {"require_token": "another-token"},
}

Outcome = type[BaseException] | None  # None: the answer parses
EXPECTED: dict[str, dict[str, Outcome]] = {
    # fault: {group: what the call raises}; the comments say what the simulator answers.
    "500": {  # TGI's incomplete_generation on /, OpenAI's server_error on /v1
        "hf_text": hf_errors.IncompleteGenerationError,
        "hf_chat": hf_errors.HfHubHTTPError,
        "tgi_generate": tgi_errors.IncompleteGenerationError,
        "tgi_chat": tgi_errors.UnknownError,
        "openai": openai.InternalServerError,
    },
    "429+Retry-After": {  # TGI's overloaded on /, OpenAI's rate_limit_exceeded on /v1
        "hf_text": hf_errors.OverloadedError,
        "hf_chat": hf_errors.HfHubHTTPError,
        "tgi_generate": tgi_errors.OverloadedError,
        "tgi_chat": tgi_errors.RateLimitExceededError,
        "openai": openai.RateLimitError,
    },
    "503 loading": {  # HF's {"error", "estimated_time"} everywhere
        "hf_text": hf_errors.HfHubHTTPError,
        "hf_chat": hf_errors.HfHubHTTPError,
        "tgi_generate": tgi_errors.UnknownError,
        "tgi_chat": tgi_errors.UnknownError,
        "openai": openai.InternalServerError,
    },
    "503 outage": {
        "hf_text": hf_errors.HfHubHTTPError,
        "hf_chat": hf_errors.HfHubHTTPError,
        "tgi_generate": tgi_errors.UnknownError,
        "tgi_chat": tgi_errors.UnknownError,
        "openai": openai.InternalServerError,
    },
    "down": {  # huggingface_hub and text_generation let requests' error through
        "hf_text": requests.ConnectionError,
        "hf_chat": requests.ConnectionError,
        "tgi_generate": requests.ConnectionError,
        "tgi_chat": requests.ConnectionError,
        "openai": openai.APIConnectionError,
    },
    "timeout": {  # InferenceClient maps only the builtin TimeoutError, not requests'
        "hf_text": requests.ReadTimeout,
        "hf_chat": requests.ReadTimeout,
        "tgi_generate": requests.ReadTimeout,
        "tgi_chat": requests.ReadTimeout,
        "openai": openai.APITimeoutError,
    },
    "context_length_exceeded": {  # TGI's 422 validation on /, OpenAI's 400 on /v1
        "hf_text": hf_errors.ValidationError,
        "hf_chat": hf_errors.BadRequestError,
        "tgi_generate": tgi_errors.ValidationError,
        "tgi_chat": tgi_errors.BadRequestError,
        "openai": openai.BadRequestError,
    },
    "307 redirect": dict.fromkeys(("hf_text", "hf_chat", "tgi_generate", "tgi_chat", "openai")),
    "308 redirect": dict.fromkeys(("hf_text", "hf_chat", "tgi_generate", "tgi_chat", "openai")),
    "401": {
        "hf_text": hf_errors.HfHubHTTPError,
        "hf_chat": hf_errors.HfHubHTTPError,
        "tgi_generate": tgi_errors.UnknownError,
        "tgi_chat": tgi_errors.UnknownError,
        "openai": openai.AuthenticationError,
    },
}


def _response(exc: BaseException) -> Any:
    """The HTTP response behind a client's error, where the client keeps it."""
    return getattr(exc, "response", None) or getattr(exc.__cause__, "response", None)


@pytest.mark.parametrize("call", FAULT_CALLS)
@pytest.mark.parametrize("fault", FAULTS)
def test_faults_parse_or_raise_the_clients_own_error(
    sim: SimulatorServer, fault: str, call: str
) -> None:
    """Under each fault mode each client call parses the answer or raises its expected class."""
    sim.configure(**FAULTS[fault])
    expected = EXPECTED[fault][FAULT_CALLS[call].group]
    if expected is None:
        FAULT_CALLS[call].call(sim.url)  # parses, or the client raises
        status = FAULTS[fault].get("redirect_status", 307)
        assert sim.stats()["by_outcome"] == {f"redirect_{status}": 1, "ok": 1}
        return
    with pytest.raises(expected) as caught:
        FAULT_CALLS[call].call(sim.url)
    assert type(caught.value) is expected
    response = _response(caught.value)  # text_generation's errors keep none
    if fault in ("429+Retry-After", "503 loading") and not call.startswith("tgi."):
        answer = response.json()
        assert response.headers.get("retry-after") == ("2" if fault[0] == "4" else None)
        assert answer.get("estimated_time") == (7.5 if fault[0] == "5" else None)


def test_openai_sees_retry_after_of_a_429(sim: SimulatorServer) -> None:
    """The openai client's RateLimitError carries Retry-After and OpenAI's error fields."""
    sim.configure(mode="rate_limit", retry_after_s=3)
    with pytest.raises(openai.RateLimitError) as caught:
        oai(sim.url).chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.response.headers["retry-after"] == "3"
    assert (caught.value.code, caught.value.type) == ("rate_limit_exceeded", "requests")


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_openai_reads_context_length_exceeded(sim: SimulatorServer, route: str) -> None:
    """A context overflow is openai's BadRequestError with code context_length_exceeded."""
    sim.configure(max_context_tokens=8)
    client = oai(sim.url)
    calls: dict[str, Callable[[], object]] = {
        "chat": lambda: client.chat.completions.create(
            model="m",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=5,
        ),
        "completions": lambda: client.completions.create(model="m", prompt="a b c d", max_tokens=5),
    }
    with pytest.raises(openai.BadRequestError) as caught:
        calls[route]()
    error = caught.value
    assert (error.code, error.param, error.type) == (
        "context_length_exceeded",
        "messages",
        "invalid_request_error",
    )
    assert "maximum context length is 8 tokens" in error.message


def test_hf_loading_error_names_the_model(sim: SimulatorServer) -> None:
    """InferenceClient's HfHubHTTPError for a loading model carries HF's message and wait."""
    sim.configure(mode="loading", estimated_time_s=4)
    with pytest.raises(hf_errors.HfHubHTTPError) as caught:
        hf(f"{sim.url}/models/org/m", "model").text_generation(PROMPT)
    assert caught.value.server_message == "Model org/m is currently loading"
    assert caught.value.response.status_code == 503
    assert caught.value.response.json()["estimated_time"] == 4.0
