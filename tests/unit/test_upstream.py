"""worker.upstream against a real local HTTP server (pytest-httpserver), plus its pure parts."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from core.contract import GenerateRequest, GenerationParams
from core.errors import (
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from core.settings import Protocol, Settings
from worker.protocols import Answer, Route, parse_response
from worker.testing import configured
from worker.upstream import (
    UpstreamTarget,
    classify,
    generate,
    get_session,
    parse_retry_after,
    wire_request,
)

TOKEN = "hf_SeCrEtToKeN1234567890"
PARAMS = GenerationParams(max_new_tokens=16, temperature=0.5, top_p=0.9, stop=["\n"])
ASK = GenerateRequest(prompt="Hi", params=PARAMS)


def target_for(
    base_url: str,
    protocol: Protocol = "hf",
    *,
    token: str | None = TOKEN,
    read_timeout_s: float = 5.0,
) -> UpstreamTarget:
    return UpstreamTarget(
        protocol=protocol,
        base_url=base_url.rstrip("/"),
        model="org/model-1",
        token=SecretStr(token) if token is not None else None,
        connect_timeout_s=1.0,
        read_timeout_s=read_timeout_s,
    )


def ask(prompt: str, params: GenerationParams = PARAMS) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, params=params)


@pytest.fixture
def base(httpserver: HTTPServer) -> str:
    return httpserver.url_for("/").rstrip("/")


# --- requests and responses over HTTP, per protocol -----------------------------------


def test_hf_request_and_list_response(httpserver: HTTPServer, base: str) -> None:
    """hf POSTs inputs+parameters to /models/<model> with auth and JSON headers, reads a list."""
    expected = {
        "inputs": "Hi",
        "parameters": {
            "max_new_tokens": 16,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["\n"],
            "return_full_text": False,
            "details": True,
        },
    }
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": "genq/0.1",
    }
    httpserver.expect_oneshot_request(
        "/models/org/model-1", method="POST", json=expected, headers=headers
    ).respond_with_json([{"generated_text": "Hello"}])
    result = generate(target_for(base), ASK)
    assert (result.text, result.model, result.usage) == ("Hello", "org/model-1", None)
    assert result.latency_ms > 0
    httpserver.check_assertions()


def test_hf_accepts_tgi_shaped_object(httpserver: HTTPServer, base: str) -> None:
    """hf also accepts a single {"generated_text"} object, with details as usage."""
    httpserver.expect_oneshot_request("/models/org/model-1", method="POST").respond_with_json(
        {"generated_text": "Yo", "details": {"generated_tokens": 3}}
    )
    result = generate(target_for(base), ASK)
    assert (result.text, result.usage) == ("Yo", {"completion_tokens": 3})


def test_tgi_request_and_response(httpserver: HTTPServer, base: str) -> None:
    """tgi POSTs inputs+parameters to /generate and reads generated_text and details."""
    parameters = {"max_new_tokens": 16, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"]}
    expected = {
        "inputs": "Hi",
        "parameters": {**parameters, "return_full_text": False, "details": True},
    }
    httpserver.expect_oneshot_request("/generate", method="POST", json=expected).respond_with_json(
        {"generated_text": "Hey", "details": {"generated_tokens": 2}}
    )
    result = generate(target_for(base, "tgi"), ASK)
    assert (result.text, result.usage) == ("Hey", {"completion_tokens": 2})


def test_openai_request_and_response(httpserver: HTTPServer, base: str) -> None:
    """openai POSTs chat messages to /v1/chat/completions and reads content and usage."""
    expected = {
        "model": "org/model-1",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 16,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n"],
    }
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    httpserver.expect_oneshot_request(
        "/v1/chat/completions", method="POST", json=expected
    ).respond_with_json({"choices": [{"message": {"content": "Hola"}}], "usage": usage})
    result = generate(target_for(base, "openai"), ASK)
    assert (result.text, result.usage) == ("Hola", usage)


def test_openai_base_ending_in_v1_is_not_doubled(httpserver: HTTPServer, base: str) -> None:
    """A base URL that already ends in /v1 is called at /v1/chat/completions, not /v1/v1/."""
    httpserver.expect_oneshot_request("/v1/chat/completions", method="POST").respond_with_json(
        {"choices": [{"message": {"content": "ok"}}]}
    )
    assert generate(target_for(f"{base}/v1", "openai"), ASK).text == "ok"


def test_no_authorization_header_without_token(httpserver: HTTPServer, base: str) -> None:
    """Without a token no Authorization header is sent."""
    httpserver.expect_oneshot_request("/generate").respond_with_json({"generated_text": ""})
    generate(target_for(base, "tgi", token=None), ASK)
    request, _ = httpserver.log[-1]
    assert "Authorization" not in request.headers


# --- error mapping over HTTP -----------------------------------------------------------


def test_429_with_seconds_is_rate_limited(httpserver: HTTPServer, base: str) -> None:
    """A 429 with Retry-After: 7 raises UpstreamRateLimited with retry_after 7 and status 429."""
    httpserver.expect_request("/generate").respond_with_json(
        {"error": "slow down"}, status=429, headers={"Retry-After": "7"}
    )
    with pytest.raises(UpstreamRateLimited) as caught:
        generate(target_for(base, "tgi"), ASK)
    assert (caught.value.retry_after, caught.value.status) == (7.0, 429)
    assert "slow down" in str(caught.value)


def test_429_with_http_date(httpserver: HTTPServer, base: str) -> None:
    """A 429 whose Retry-After is an HTTP-date 30 s ahead gives retry_after of about 30."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    httpserver.expect_request("/generate").respond_with_data(
        "busy", status=429, headers={"Retry-After": when}
    )
    with pytest.raises(UpstreamRateLimited) as caught:
        generate(target_for(base, "tgi"), ASK)
    assert caught.value.retry_after is not None
    assert 25.0 <= caught.value.retry_after <= 30.0


def test_503_loading_uses_estimated_time(httpserver: HTTPServer, base: str) -> None:
    """HF's 503 "model is loading" with estimated_time raises UpstreamUnavailable with it."""
    body = {"error": "Model org/model-1 is currently loading", "estimated_time": 20.5}
    httpserver.expect_request("/models/org/model-1").respond_with_json(body, status=503)
    with pytest.raises(UpstreamUnavailable) as caught:
        generate(target_for(base), ASK)
    assert (caught.value.retry_after, caught.value.status) == (20.5, 503)
    assert "loading" in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_unavailable(httpserver: HTTPServer, base: str, status: int) -> None:
    """Any other 5xx raises UpstreamUnavailable carrying the status and the upstream text."""
    httpserver.expect_request("/generate").respond_with_data("boom", status=status)
    with pytest.raises(UpstreamUnavailable) as caught:
        generate(target_for(base, "tgi"), ASK)
    assert caught.value.status == status
    assert caught.value.retry_after is None
    assert f"upstream {status} from tgi org/model-1: boom" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "body", "quoted"),
    [
        (400, {"error": "Input validation error: empty inputs"}, "empty inputs"),
        (404, {"error": "Model not found"}, "Model not found"),
        (422, {"detail": [{"loc": ["top_p"], "msg": "must be < 1"}]}, "must be < 1"),
        (418, {"error": "teapot"}, "teapot"),
    ],
)
def test_4xx_is_rejected_with_upstream_message(
    httpserver: HTTPServer, base: str, status: int, body: dict[str, object], quoted: str
) -> None:
    """Each 4xx raises the final UpstreamRejected quoting the upstream's own message."""
    httpserver.expect_request("/generate").respond_with_json(body, status=status)
    with pytest.raises(UpstreamRejected) as caught:
        generate(target_for(base, "tgi"), ASK)
    assert caught.value.status == status
    assert not caught.value.transient
    assert f"upstream {status} from tgi org/model-1: " in str(caught.value)
    assert quoted in str(caught.value)


def test_non_json_2xx_is_malformed(httpserver: HTTPServer, base: str) -> None:
    """A 200 whose body is not JSON raises UpstreamMalformed with status 200."""
    httpserver.expect_request("/generate").respond_with_data("<html>hi</html>", status=200)
    with pytest.raises(UpstreamMalformed) as caught:
        generate(target_for(base, "tgi"), ASK)
    assert caught.value.status == 200


def test_wrong_shape_2xx_is_malformed(httpserver: HTTPServer, base: str) -> None:
    """A 200 JSON body of the wrong shape raises UpstreamMalformed with status 200."""
    httpserver.expect_request("/v1/chat/completions").respond_with_json({"choices": []})
    with pytest.raises(UpstreamMalformed) as caught:
        generate(target_for(base, "openai"), ASK)
    assert caught.value.status == 200


def test_connection_refused_is_unavailable() -> None:
    """A closed port raises UpstreamUnavailable with no status."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamUnavailable) as caught:
        generate(target_for(f"http://127.0.0.1:{port}"), ASK)
    assert caught.value.status is None


def test_read_timeout_is_timeout(httpserver: HTTPServer, base: str) -> None:
    """A handler slower than the 0.2 s read timeout raises UpstreamTimeout promptly."""

    def slow(_: Request) -> Response:
        time.sleep(0.6)
        return Response(json.dumps({"generated_text": "late"}), content_type="application/json")

    httpserver.expect_request("/generate").respond_with_handler(slow)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        generate(target_for(base, "tgi", read_timeout_s=0.2), ASK)
    assert time.monotonic() - started < 0.55


def test_every_call_passes_connect_and_read_timeouts(httpserver: HTTPServer, base: str) -> None:
    """generate passes (connect, read) timeouts on the given session."""
    seen: dict[str, object] = {}

    class Spy(requests.Session):
        def request(self, *args: Any, **kwargs: Any) -> requests.Response:
            seen.update(kwargs)
            return super().request(*args, **kwargs)

    httpserver.expect_request("/generate").respond_with_json({"generated_text": "x"})
    generate(target_for(base, "tgi", read_timeout_s=4.0), ASK, session=Spy())
    assert seen["timeout"] == (1.0, 4.0)


# --- secrets ---------------------------------------------------------------------------


def echo_authorization(status: int) -> Callable[[Request], Response]:
    """A handler that answers ``status`` with the request's Authorization header in it."""

    def handler(request: Request) -> Response:
        auth = request.headers.get("Authorization", "")
        body = {"error": f"bad header {auth!r}; token was {auth.removeprefix('Bearer ')}"}
        return Response(json.dumps(body), status=status, content_type="application/json")

    return handler


@pytest.mark.parametrize(("status", "error"), [(400, UpstreamRejected), (500, UpstreamUnavailable)])
def test_echoed_token_never_reaches_the_message(
    httpserver: HTTPServer, base: str, status: int, error: type[Exception]
) -> None:
    """An upstream that echoes the bearer token in a 400/500 body does not leak it."""
    httpserver.expect_request("/generate").respond_with_handler(echo_authorization(status))
    with pytest.raises(error) as caught:
        generate(target_for(base, "tgi"), ASK)
    request, _ = httpserver.log[-1]
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"  # the echo really happened
    assert TOKEN not in str(caught.value)
    assert TOKEN[:12] not in repr(caught.value.args)
    assert "bad header" in str(caught.value)


@pytest.mark.parametrize("status", [401, 403])
def test_an_auth_refusal_quotes_none_of_the_upstreams_text(status: int) -> None:
    """OpenAI's 401 quotes the key it refused, masked but in part ("sk-ab***wxyz"): an
    auth refusal's text is not quoted at all; the status still says what happened."""
    body = '{"error": {"message": "Incorrect API key provided: sk-ab***************wxyz."}}'
    error = classify(status, {}, body, SecretStr("sk-abcdefghijklmnopwxyz"))
    assert isinstance(error, UpstreamRejected)
    assert "wxyz" not in str(error) and "sk-ab" not in str(error)
    assert f"upstream {status}" in str(error)


def test_scrubs_bearer_values_other_than_the_token() -> None:
    """Whatever follows "Bearer " is scrubbed even when it is not the configured token."""
    error = classify(400, {}, "got Authorization: Bearer sk-other-credential", None)
    assert "sk-other-credential" not in str(error)
    assert "Bearer ***" in str(error)


def test_long_upstream_text_is_truncated() -> None:
    """An upstream message is quoted in at most about 300 characters."""
    error = classify(500, {}, "x" * 5000, None)
    assert 300 <= len(str(error)) < 400


# --- session -----------------------------------------------------------------------------


def test_session_is_reused_within_a_process() -> None:
    """get_session returns the same pooled Session on every call in one process."""
    assert get_session() is get_session()


def test_session_has_no_urllib3_retries_and_a_pool_per_concurrent_job() -> None:
    """The Session's adapters never retry (Celery is the one retry layer) and keep as many
    connections per host as the worker runs jobs at once: no call finds the pool full."""
    with configured({"GENQ_WORKER_CONCURRENCY": "2000"}):
        for prefix in ("http://x", "https://x"):
            adapter = get_session().get_adapter(prefix)
            assert isinstance(adapter, requests.adapters.HTTPAdapter)
            assert adapter.max_retries.total == 0
            assert adapter.poolmanager.connection_pool_kw["maxsize"] == 2000
    with configured({"GENQ_WORKER_CONCURRENCY": "16"}):  # and a `-c` above it is covered
        maxsize = get_session().get_adapter("http://x").poolmanager.connection_pool_kw["maxsize"]
        assert maxsize == 1000


def test_generate_uses_the_process_session(httpserver: HTTPServer, base: str) -> None:
    """Without a session argument, generate sends through get_session()'s Session."""
    calls: list[str] = []
    session = get_session()
    original = session.request

    def counting(*args: Any, **kwargs: Any) -> requests.Response:
        calls.append(str(args[1]))
        return original(*args, **kwargs)

    httpserver.expect_request("/generate").respond_with_json({"generated_text": "x"})
    session.request = counting  # type: ignore[method-assign]
    try:
        generate(target_for(base, "tgi"), ASK)
    finally:
        del session.request
    assert calls == [f"{base}/generate"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_session() -> None:
    """After fork the child builds a new Session instead of reusing its parent's sockets."""
    parent = get_session()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write_end, b"new" if get_session() is not parent else b"same")
        os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 8)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert answer == b"new"
    assert get_session() is parent


# --- circuit name and settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "base_url", "model", "name"),
    [
        ("hf", "http://127.0.0.1:8081", "simulator/echo-1", "hf~127.0.0.1:8081~simulator.echo-1"),
        (
            "openai",
            "https://user:pw@router.huggingface.co/v1",
            "meta-llama/Llama-3.1-8B-Instruct:cerebras",
            "openai~router.huggingface.co.v1~meta-llama.Llama-3.1-8B-Instruct:cerebras",
        ),
        ("tgi", "http://tgi.local", "a b~c?d#e", "tgi~tgi.local~a.b.c.d.e"),
    ],
)
def test_circuit_name_rule(protocol: Protocol, base_url: str, model: str, name: str) -> None:
    """The name is protocol~host[:port][path]~model with unsafe characters turned into '.'."""
    target = UpstreamTarget(protocol, base_url, model, None, 1.0, 1.0)
    assert target.name == name


def test_circuit_name_is_one_safe_path_segment() -> None:
    """A name has only [A-Za-z0-9._:~-] characters, so it needs no quoting in a URL path."""
    target = UpstreamTarget("hf", "http://h:1/a/b?q=1", "x/y z%2F..", None, 1.0, 1.0)
    assert set(target.name) <= set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:~-"
    )
    assert target.name.count("~") == 2


def test_from_settings_strips_trailing_slash_and_overrides_model() -> None:
    """from_settings maps the GENQ_UPSTREAM_* fields and drops the URL's trailing slash."""
    settings = Settings(
        upstream_url="http://127.0.0.1:8081/",
        upstream_protocol="tgi",
        upstream_token=SecretStr("t0k"),
        upstream_timeout_s=12.0,
        upstream_connect_timeout_s=2.0,
    )
    target = UpstreamTarget.from_settings(settings, model="other/model")
    assert target == UpstreamTarget(
        "tgi", "http://127.0.0.1:8081", "other/model", SecretStr("t0k"), 2.0, 12.0
    )
    assert UpstreamTarget.from_settings(settings).model == settings.upstream_model


# --- pure: build_request ---------------------------------------------------------------


def test_hf_omits_zero_temperature_neutral_top_p_and_empty_stop() -> None:
    """hf/tgi bodies leave out temperature 0, top_p 1 and an empty stop list."""
    params = GenerationParams(max_new_tokens=8, temperature=0.0, top_p=1.0, stop=[])
    protocols: tuple[Protocol, ...] = ("hf", "tgi")
    for protocol in protocols:
        body = wire_request(target_for("http://h", protocol), ask("p", params)).body
        assert body["parameters"] == {
            "max_new_tokens": 8,
            "return_full_text": False,
            "details": True,
        }


def test_openai_sends_temperature_zero_and_omits_empty_stop() -> None:
    """openai bodies keep temperature 0 (valid there) and leave out an empty stop list."""
    params = GenerationParams(max_new_tokens=8, temperature=0.0, top_p=1.0, stop=[])
    wire = wire_request(target_for("http://h", "openai"), ask("p", params))
    url, body = wire.url, wire.body
    assert url == "http://h/v1/chat/completions"
    assert (body["temperature"], body["top_p"], "stop" in body) == (0.0, 1.0, False)


def test_hf_url_keeps_model_slash_and_quotes_the_rest() -> None:
    """The hf URL keeps the org/name slash and percent-quotes other unsafe characters."""
    target = UpstreamTarget("hf", "http://h", "org/a b", None, 1.0, 1.0)
    assert wire_request(target, ask("p")).url == "http://h/models/org/a%20b"


# --- pure: parse_response --------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("text_generation", []),
        ("text_generation", [{"text": "x"}]),
        ("text_generation", {"generated_text": 3}),
        ("text_generation", "just a string"),
        ("text_generation", None),
        ("chat", {"choices": [{"message": {"content": None}}]}),
        ("chat", {"choices": [{"text": "legacy"}]}),
        ("chat", [{"generated_text": "x"}]),
        ("completions", {"choices": [{"message": {"content": "chat"}}]}),
    ],
)
def test_parse_response_rejects_wrong_shapes(route: Route, body: object) -> None:
    """Bodies that are not the route's shape raise UpstreamMalformed naming the shape."""
    with pytest.raises(UpstreamMalformed, match="malformed answer from"):
        parse_response(route, body, "m")


def test_parse_response_keeps_only_integer_usage() -> None:
    """openai usage keeps integer counts and drops anything else."""
    body = {
        "choices": [{"message": {"content": "ok"}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": "3", "total_tokens": True},
    }
    assert parse_response("chat", body, "m") == Answer("ok", {"prompt_tokens": 2}, None)


# --- pure: parse_retry_after and classify ----------------------------------------------

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-5", 0.0),
        ("Wed, 01 Jan 2025 12:00:30 GMT", 30.0),
        ("Wed, 01 Jan 2025 11:59:00 GMT", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("1_000", None),
        ("Wed, 99 Foo 2025", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    """Retry-After parses as seconds or an HTTP-date; negatives and past dates give 0."""
    assert parse_retry_after(value, now=NOW) == seconds


def test_classify_reads_headers_case_insensitively() -> None:
    """classify finds retry-after whatever its header case, on 429 and on plain 5xx."""
    assert classify(429, {"retry-after": "3"}, "", None).retry_after == 3.0
    assert classify(502, {"RETRY-AFTER": "4"}, "", None).retry_after == 4.0


def test_classify_503_without_estimated_time_is_plain_unavailable() -> None:
    """A 503 without estimated_time is UpstreamUnavailable and does not say it is loading."""
    error = classify(503, {}, json.dumps({"error": "overloaded"}), None)
    assert isinstance(error, UpstreamUnavailable)
    assert error.retry_after is None
    assert "loading" not in str(error)


def test_classify_408_is_a_transient_timeout() -> None:
    """A 408 is the server giving up on waiting, so it maps to the transient UpstreamTimeout."""
    error = classify(408, {}, "", None)
    assert isinstance(error, UpstreamTimeout)
    assert error.transient


def test_an_answer_that_trickles_is_cut_off_at_the_attempts_deadline(
    httpserver: HTTPServer, base: str
) -> None:
    """A body sent a byte every 0.3 s (each read well inside the 1 s read timeout) ends the
    attempt at connect + read timeout, not when the upstream stops trickling."""

    def trickle(request: Request) -> Response:
        def body() -> Any:
            for byte in b'{"generated_text": "' + b"x" * 100 + b'"}':
                time.sleep(0.3)
                yield bytes([byte])

        return Response(body(), status=200, content_type="application/json")

    httpserver.expect_request("/generate").respond_with_handler(trickle)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="deadline"):
        generate(target_for(base, "tgi", read_timeout_s=1.0), ASK)
    assert time.monotonic() - started < 1.0 + 1.0 + 0.5  # connect + read, and one last read


def test_an_answer_cut_off_mid_body_is_unavailable() -> None:
    """A server that promises 1,000 bytes and closes after 21: a transient
    UpstreamUnavailable (urllib3's ProtocolError does not escape as an internal error)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def answer_part() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                conn.sendall(head + b"Content-Length: 1000\r\n\r\n" + b'{"generated_text": "x')

        thread = threading.Thread(target=answer_part)
        thread.start()
        with pytest.raises(UpstreamUnavailable, match="ProtocolError") as caught:
            generate(target_for(f"http://127.0.0.1:{port}", "tgi"), ASK)
        thread.join(timeout=5)
    assert caught.value.transient
