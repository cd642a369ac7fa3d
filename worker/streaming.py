"""Streamed jobs: the upstream's answer relayed piece by piece, through Redis, to the API.

    worker: upstream events → StreamRelay.piece (XADD genq:job:{id}:stream) → API: XREAD

A job asked with ``stream: true`` (``JobMessage.stream``) calls the upstream with
streaming on (``worker.protocols.streams``: OpenAI and TGI stream, HF answers whole and
is relayed as one piece) and relays each piece as it arrives; the run then ends as any
other (the whole answer recorded and cached in one write). The relay's last entry says
how the run ended: ``end`` (the job is final: the API reads its record) or ``error`` (the
upstream broke off after pieces were relayed: the API ends the client's stream with an
error event; the job itself goes on as its retry rules say, and a cut answer is never
cached, since the call raised).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
import requests
import urllib3.exceptions
from redis.exceptions import RedisError
from requests import Session

from core import keys
from core.contract import GenerateRequest
from core.errors import UpstreamMalformed, UpstreamTimeout, UpstreamUnavailable
from worker.protocols.streams import parse_event, stream_request
from worker.upstream import (
    MAX_ERROR_BODY_BYTES,
    READ_CHUNK_BYTES,
    Generation,
    UpstreamTarget,
    classify,
    generate,
    get_session,
    post,
    read_body,
    transport_error,
    wire_request,
)

__all__ = ["StreamRelay", "generate_stream"]

log = logging.getLogger(__name__)

STREAM_TTL_S = 3600
"""How long a job's relayed pieces stay readable after the last one."""
MAX_LINE_BYTES = 1 << 20
"""A longer line of a streamed answer is malformed, not read whole."""
MAX_PIECES = 100_000
"""A stream keeps about this many pieces (XADD MAXLEN ~): a bound, not a limit met."""


class StreamRelay:
    """One job's relay: its pieces, then how the run ended. Thread-safe (one per run)."""

    def __init__(self, client: redis.Redis, job_id: str) -> None:
        self._redis = client
        self._key = keys.job_stream(job_id)
        self.pieces = 0
        self.broken = False

    def piece(self, text: str) -> None:
        """One piece of the answer, as the upstream sent it."""
        if text:
            self._add({"p": text})
            self.pieces += 1

    def error(self, message: str) -> None:
        """The answer broke off after pieces went out: the client's stream ends in error."""
        self._add({"error": message})

    def end(self) -> None:
        """The job is final: its record has the whole answer (or its error)."""
        self._add({"end": "1"})

    def _add(self, fields: dict[str, str]) -> None:
        """Best effort: a relay Redis does not take is logged, never raised, and the
        relay stops (the call it runs inside must not fail, slow down nor count against
        the circuit for it); the API sends what the record holds beyond what it relayed."""
        if self.broken:  # after one failure, no more round trips inside the call
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(self._key, fields, maxlen=MAX_PIECES, approximate=True)  # type: ignore[arg-type]
        pipe.expire(self._key, STREAM_TTL_S)
        try:
            pipe.execute()
        except RedisError as exc:
            self.broken = True
            log.warning("stream.relay_failed", extra={"error": type(exc).__name__})


def generate_stream(
    target: UpstreamTarget,
    request: GenerateRequest,
    relay: StreamRelay,
    session: Session | None = None,
) -> Generation:
    """Call the upstream once with streaming on, relaying each piece; the whole answer,
    or an UpstreamError (an answer that stops before its end is UpstreamUnavailable)."""
    wire = wire_request(target, request)
    streamed = stream_request(target.protocol, wire)
    if streamed is None:  # hf: the answer comes whole
        generation = generate(target, request, session)
        relay.piece(generation.text)
        return generation
    origin = f"{target.protocol} {target.model}"
    started = time.perf_counter()
    deadline = time.monotonic() + target.connect_timeout_s + target.read_timeout_s
    response = post(session or get_session(), target, streamed)
    if not 200 <= response.status_code < 300:
        body = read_body(response, deadline, MAX_ERROR_BODY_BYTES, origin)
        text = body.decode("utf-8", "replace")
        raise classify(response.status_code, response.headers, text, target.token, origin=origin)
    pieces, finish, usage, done = [], None, None, False
    try:
        for line in _lines(response, deadline, origin):
            event = parse_event(wire.route, line, origin)
            if event is None:
                continue
            relay.piece(event.text)
            pieces.append(event.text)
            finish = event.finish_reason or finish
            usage = event.usage or usage
            done = done or event.done or event.finish_reason is not None
    finally:
        response.close()
    if not done:
        raise UpstreamUnavailable(f"upstream {origin} ended its stream mid-answer")
    latency_ms = (time.perf_counter() - started) * 1000.0
    return Generation("".join(pieces), target.model, latency_ms, usage, finish)


def _lines(response: requests.Response, deadline: float, origin: str) -> Iterator[bytes]:
    """The body's lines as they arrive (``read1``: whatever came, not a full buffer), cut
    off at ``deadline`` as a whole answer is (``worker.upstream.read_body``)."""
    rest = b""
    try:
        while chunk := response.raw.read1(READ_CHUNK_BYTES, decode_content=True):
            *complete, rest = (rest + chunk).split(b"\n")
            yield from (line.rstrip(b"\r") for line in complete)
            if len(rest) > MAX_LINE_BYTES:
                raise UpstreamMalformed(f"upstream {origin} sent a line over {MAX_LINE_BYTES} B")
            if time.monotonic() > deadline:
                raise UpstreamTimeout(f"upstream {origin} took longer than its deadline to answer")
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise transport_error(exc, origin, "read") from exc
    if rest:
        yield rest
