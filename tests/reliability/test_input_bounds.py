"""Bad and oversized input against the real API process: a clear 4xx naming the field or
the limit, never a 500, nothing accepted; slow bodies cut off."""

from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests

from tests.integration.conftest import API_KEY, auth

pytestmark = pytest.mark.reliability


def jobs(r: redis.Redis) -> int:
    return sum(1 for k in r.scan_iter("genq:job:*") if str(k).count(":") == 2)


def post(api_url: str, body: bytes) -> requests.Response:
    headers = {**auth(), "Content-Type": "application/json"}
    return requests.post(f"{api_url}/v1/jobs", data=body, headers=headers, timeout=10)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"prompt": "x", "params": {"temperature": NaN}}', "temperature"),
        (b'{"prompt": "x", "params": {"top_p": Infinity}}', "top_p"),
        (b'{"prompt": "x\\ud800y"}', "prompt"),
        (b'{"prompt": "x", "context": [{"id": "a", "text": "\\udfff"}]}', "text"),
        (b'{"messages": [{"role": "user", "content": "\\ud83d"}]}', "content"),
        (b'{"prompt": "x", "params": {"stop": ["' + b"s" * 257 + b'"]}}', "stop"),
        (
            b'{"prompt": "x", "context": ['
            + b",".join(b'{"id": "%d", "text": "%s"}' % (i, b"t" * 30_000) for i in range(2))
            + b"]}",
            "context",
        ),
    ],
)
def test_bad_input_is_a_422_naming_the_field_and_nothing_is_accepted(
    api_url: str, r: redis.Redis, body: bytes, field: str
) -> None:
    """NaN, Infinity, lone surrogates, an overlong stop and too much context: 422 with the
    field, never a 500, and no job record."""
    before = jobs(r)
    resp = post(api_url, body)
    assert resp.status_code == 422, resp.text
    errors: list[dict[str, Any]] = resp.json()["detail"]
    assert any(field in e["loc"] or field in e["msg"] for e in errors), errors
    assert all("input" not in e for e in errors)
    assert jobs(r) == before


def test_a_body_over_the_limit_is_413_naming_it(api_url: str) -> None:
    """A body over GENQ_MAX_BODY_BYTES is refused before it is read, with the limit."""
    resp = post(api_url, b'{"prompt": "' + b"x" * 250_000 + b'"}')
    assert resp.status_code == 413
    assert "200000" in resp.json()["detail"]


def test_a_chunked_body_over_the_limit_is_413(api_url: str) -> None:
    """Without a Content-Length, the body is counted as it arrives and cut at the limit."""

    def chunks() -> Any:
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    headers = {**auth(), "Content-Type": "application/json"}
    resp = requests.post(f"{api_url}/v1/jobs", data=chunks(), headers=headers, timeout=10)
    assert resp.status_code == 413


def test_a_body_that_never_finishes_is_cut_off(api_url: str) -> None:
    """A client that sends part of its body and stalls gets 408 after GENQ_BODY_TIMEOUT_S
    (2 s here), not after its own timeout."""
    url = urlsplit(api_url)
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"prompt": ')
        reply = sock.recv(4096)
    elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    assert 1.5 < elapsed < 5
