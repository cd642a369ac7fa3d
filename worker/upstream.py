"""The model endpoint over HTTP: one request per generation, failures as typed errors.

With ``worker.streaming`` (a streamed answer read piece by piece), the only module in
genq that imports ``requests``: it speaks ``hf`` (Inference API),
``tgi`` and ``openai`` (chat completions) and raises ``core.errors.UpstreamError``. It
never retries nor follows redirects (Celery's retry, fed by ``worker.backoff``, is the
one retry layer). No message holds request headers or the token: quoted text is scrubbed.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

import requests
import urllib3.exceptions
from pydantic import SecretStr
from requests import Session
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ReadTimeoutError

from core.circuits import circuit_name
from core.connections import MIN_POOL
from core.contract import GenerateRequest
from core.errors import (
    UpstreamError,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from core.settings import Protocol, Settings, get_settings
from worker.protocols import PromptRoute, WireRequest, build_request, parse_response

__all__ = [
    "Generation",
    "UpstreamTarget",
    "classify",
    "generate",
    "get_session",
    "parse_retry_after",
    "post",
    "read_body",
    "transport_error",
    "wire_request",
]

USER_AGENT = "genq/0.1"
POOL_HOSTS = 4  # hosts whose pools are kept (normally one upstream)
MAX_DETAIL_CHARS = 300  # longest piece of upstream error text quoted in a message
MAX_ERROR_BODY_BYTES = 64 * 1024  # of an error body, decoded to find its message
MAX_REDIRECTS = 3  # a generation route that moved is followed this far, no further
MAX_BODY_BYTES = 16 * 1024 * 1024  # a larger 2xx answer is malformed, not read whole
READ_CHUNK_BYTES = 64 * 1024

_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
_DECIMAL = re.compile(r"[+-]?\d+(\.\d+)?")


@dataclass(frozen=True)
class UpstreamTarget:
    """Where and how to call the model: protocol, endpoint, model, token, timeouts."""

    protocol: Protocol
    base_url: str
    """Endpoint root without a trailing slash, e.g. ``https://router.huggingface.co/v1``."""
    model: str
    token: SecretStr | None
    connect_timeout_s: float
    read_timeout_s: float
    prompt_route: PromptRoute | None = None
    """Where a prompt goes on openai/tgi (``worker.protocols``); None: the protocol's default."""

    @functools.cached_property
    def name(self) -> str:
        """The circuit name (``core.circuits.circuit_name``)."""
        return circuit_name(self.protocol, self.base_url, self.model)

    @classmethod
    def from_settings(cls, settings: Settings, model: str | None = None) -> UpstreamTarget:
        """The configured upstream, optionally for another model on the same endpoint."""
        return cls(
            protocol=settings.upstream_protocol,
            base_url=str(settings.upstream_url).rstrip("/"),
            model=model or settings.upstream_model,
            token=settings.upstream_token,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            read_timeout_s=settings.upstream_timeout_s,
            prompt_route=settings.upstream_prompt_route,
        )


@dataclass(frozen=True)
class Generation:
    """One successful upstream answer."""

    text: str
    model: str
    latency_ms: float
    usage: dict[str, int] | None
    finish_reason: str | None = None


def wire_request(target: UpstreamTarget, request: GenerateRequest) -> WireRequest:
    """What one generation sends to ``target`` (``worker.protocols``)."""
    return build_request(
        target.protocol, target.base_url, target.model, request, target.prompt_route
    )


def classify(
    status: int,
    headers: Mapping[str, str],
    body_text: str,
    token: SecretStr | None,
    *,
    origin: str | None = None,
) -> UpstreamError:
    """The error for a non-2xx answer; ``origin`` (e.g. ``"hf gpt2"``) names the upstream."""
    prefix = f"upstream {status}" + (f" from {origin}" if origin else "")
    try:
        payload = json.loads(body_text)
    except ValueError:
        payload = None
    if status in (401, 403):  # an auth refusal may quote the key (masked, in part)
        detail = "(the upstream's text is not quoted: it may name the token)"
    else:
        detail = _scrub(_error_detail(payload, body_text), token)
    fields = CaseInsensitiveDict(headers)
    retry_after = parse_retry_after(fields.get("Retry-After"))
    loading = _number(payload.get("estimated_time") if isinstance(payload, dict) else None)
    if status == 429:
        hint = f"; retry in {retry_after:g}s" if retry_after is not None else ""
        message = f"{prefix}: rate limited{hint}: {detail}"
        return UpstreamRateLimited(message, status=status, retry_after=retry_after)
    if status == 503 and loading is not None:
        wait = max(0.0, loading)
        message = f"{prefix}: the model is loading; retry in about {wait:g}s: {detail}"
        return UpstreamUnavailable(message, status=status, retry_after=wait)
    if status >= 500:
        return UpstreamUnavailable(f"{prefix}: {detail}", status=status, retry_after=retry_after)
    if 300 <= status < 400:  # moved, and not followed (no Location, or too many hops)
        message = f"{prefix}: redirected ({fields.get('Location', 'no Location')}): {detail}"
        return UpstreamUnavailable(message, status=status)
    if status == 408:  # the server gave up waiting for the request: worth another try
        return UpstreamTimeout(f"{prefix}: request timed out: {detail}", status=status)
    hint = "check the token, URL, model and parameters; retrying will not help"
    return UpstreamRejected(f"{prefix}: {detail} ({hint})", status=status)


def _error_detail(payload: object, text: str) -> str:
    """The upstream's own message, with its code: OpenAI ``{"error": {"message", "code"}}``,
    TGI ``{"error", "error_type"}``, HF ``{"error"}``, else ``message`` / ``detail``, else
    the text."""
    if not isinstance(payload, dict):
        return text or "(empty body)"
    for key in ("error", "message", "detail"):
        value, code = payload.get(key), None
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            value, code = value["message"], value.get("code") or value.get("type")
        elif key == "error":
            code = payload.get("error_type")
        if value is not None:
            message = value if isinstance(value, str) else json.dumps(value)
            return f"{code}: {message}" if isinstance(code, str) and code else message
    return text or "(empty body)"


def _scrub(text: str, token: SecretStr | None) -> str:
    """Remove the token and bearer credentials, collapse whitespace, truncate."""
    secret = token.get_secret_value() if token is not None else ""
    text = " ".join(_BEARER.sub(r"\1***", text.replace(secret, "***") if secret else text).split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


def _number(value: object) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None  # type: ignore[arg-type]


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP-date); past or negative → 0."""
    value = (value or "").strip()
    if not value:
        return None
    if _DECIMAL.fullmatch(value):
        return max(0.0, float(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


Phase = Literal["send", "read"]
"""Where a transport failure happened: the POST up to the answer's headers (``post``), or
the answer's body (``read_body``)."""
_SEND: tuple[Phase, ...] = ("send",)
_ANY: tuple[Phase, ...] = ("send", "read")


@dataclass(frozen=True)
class _Rule:
    """A row of TRANSPORT_ERRORS. ``message`` may quote ``{origin}``, ``{name}`` (the
    exception's class), ``{limits}`` (the timeouts) and ``{redirects}``."""

    phases: tuple[Phase, ...]
    kinds: tuple[type[Exception], ...]
    error: type[UpstreamError]
    message: str
    when: Callable[[Exception], bool] | None = None

    def takes(self, exc: Exception, phase: Phase) -> bool:
        """Whether this row decides ``exc`` in ``phase``."""
        kind = phase in self.phases and isinstance(exc, self.kinds)
        return kind and (self.when is None or self.when(exc))


def _wraps_read_timeout(exc: Exception) -> bool:
    """requests re-raises a read timeout met mid-body as ``ConnectionError(ReadTimeoutError)``."""
    return bool(exc.args) and isinstance(exc.args[0], ReadTimeoutError)


_REDIRECTED = "upstream {origin} redirected more than {redirects} times"
_READ_TIMEOUT = "upstream {origin} timed out reading the body"
_UNREACHABLE = (
    "upstream {origin} unreachable ({name}): is the server up and GENQ_UPSTREAM_URL right?"
)

TRANSPORT_ERRORS: tuple[_Rule, ...] = (
    _Rule(_SEND, (requests.TooManyRedirects,), UpstreamUnavailable, _REDIRECTED),
    _Rule(_SEND, (requests.Timeout,), UpstreamTimeout, "upstream {origin} timed out ({limits})"),
    _Rule(_ANY, (requests.Timeout, ReadTimeoutError), UpstreamTimeout, _READ_TIMEOUT),
    _Rule(_ANY, (requests.RequestException,), UpstreamTimeout, _READ_TIMEOUT, _wraps_read_timeout),
    # The class name only, here and below: requests' text repeats the URL and pool internals.
    _Rule(_SEND, (requests.ConnectionError,), UpstreamUnavailable, _UNREACHABLE),
    # e.g. ChunkedEncodingError: the answer broke off.
    _Rule(_ANY, (Exception,), UpstreamUnavailable, "upstream {origin} failed ({name})"),
)
"""Transport failures (requests' and urllib3's exceptions) as genq's errors, in order: the
first row that takes an exception in its phase decides."""


def transport_error(
    exc: Exception, origin: str, phase: Phase, *, timeouts: tuple[float, float] | None = None
) -> UpstreamError:
    """The error for a transport failure in ``phase`` (see TRANSPORT_ERRORS); ``timeouts``
    (connect, read) are quoted when a send times out. No request text is quoted, so never
    the token."""
    rule = next(rule for rule in TRANSPORT_ERRORS if rule.takes(exc, phase))
    limits = f"connect {timeouts[0]:g}s, read {timeouts[1]:g}s" if timeouts else ""
    name = type(exc).__name__
    fields = {"origin": origin, "name": name, "limits": limits, "redirects": MAX_REDIRECTS}
    return rule.error(rule.message.format_map(fields))


def get_session() -> Session:
    """This process's pooled Session; a forked child gets its own, never its parent's.
    Each host's pool may keep a connection for every job the worker runs at once, so no
    call ever finds the pool full (urllib3 would open, then discard, an extra one)."""
    return _session_for(os.getpid(), max(MIN_POOL, get_settings().worker_concurrency))


@functools.lru_cache(maxsize=1)
def _session_for(pid: int, pool_size: int) -> Session:
    """Keyed on the pid: sockets inherited across fork must never be shared."""
    session = Session()
    session.trust_env = False  # env proxies/netrc would bypass settings.py (STYLE 8)
    session.max_redirects = MAX_REDIRECTS
    # max_retries=0: Celery's retry is genq's only retry layer; no urllib3 Retry.
    adapter = HTTPAdapter(pool_connections=POOL_HOSTS, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def generate(
    target: UpstreamTarget, request: GenerateRequest, session: Session | None = None
) -> Generation:
    """Call the upstream once; returns a Generation or raises an UpstreamError."""
    origin = f"{target.protocol} {target.model}"
    wire = wire_request(target, request)
    started = time.perf_counter()
    deadline = time.monotonic() + target.connect_timeout_s + target.read_timeout_s
    response = post(session or get_session(), target, wire)
    status = response.status_code
    ok = 200 <= status < 300
    body = read_body(response, deadline, MAX_BODY_BYTES if ok else MAX_ERROR_BODY_BYTES, origin)
    latency_ms = (time.perf_counter() - started) * 1000.0
    if not ok:
        text = body.decode("utf-8", "replace")
        raise classify(status, response.headers, text, target.token, origin=origin)
    try:
        answer = parse_response(wire.route, json.loads(body), origin)
    except ValueError:  # not JSON, or not UTF-8; parse_response raises no ValueError
        message = f"upstream {status} from {origin}: the body is not JSON"
        raise UpstreamMalformed(message, status=status) from None
    except UpstreamMalformed as exc:
        exc.status = status
        raise
    return Generation(
        text=answer.text,
        model=target.model,
        latency_ms=latency_ms,
        usage=answer.usage,
        finish_reason=answer.finish_reason,
    )


def read_body(response: requests.Response, deadline: float, limit: int, origin: str) -> bytes:
    """The body, read chunk by chunk until ``deadline``: an upstream that trickles its
    answer is cut off (UpstreamTimeout) rather than held for as long as it trickles.

    A read that stalls completely still waits out one read timeout, so an attempt lasts
    at most connect + 2 x read timeout (``Settings`` checks the visibility timeout
    against that). At most ``limit`` bytes are kept; past them an answer is malformed.
    """
    chunks, size = [], 0
    try:
        # read1: whatever has arrived (at least a byte, within the read timeout), so the
        # deadline is checked as a trickle goes on, not once a whole chunk has filled.
        while chunk := response.raw.read1(READ_CHUNK_BYTES, decode_content=True):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit and limit == MAX_BODY_BYTES:
                raise UpstreamMalformed(f"upstream {origin} answered more than {limit} bytes")
            if size > limit or time.monotonic() > deadline:
                break
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        # urllib3's own errors too: an answer cut off mid-body raises its ProtocolError.
        raise transport_error(exc, origin, "read") from exc
    finally:
        response.close()
    if time.monotonic() > deadline:
        raise UpstreamTimeout(f"upstream {origin} took longer than its deadline to answer")
    return b"".join(chunks)[:limit]


def post(session: Session, target: UpstreamTarget, wire: WireRequest) -> requests.Response:
    """POST once (redirects followed, at most MAX_REDIRECTS), the body left to ``read_body``;
    transport failures become UpstreamErrors."""
    token = target.token.get_secret_value() if target.token is not None else ""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    headers = {"Content-Type": "application/json", "Accept": "application/json", **auth}
    headers["User-Agent"] = USER_AGENT
    limit = (target.connect_timeout_s, target.read_timeout_s)
    origin = f"{target.protocol} {target.model}"
    try:
        # requests keeps a POST a POST on 307/308 and drops the Authorization header
        # when a redirect leaves the host, so the token never follows one elsewhere.
        return session.post(wire.url, json=wire.body, headers=headers, timeout=limit, stream=True)
    except requests.RequestException as exc:
        raise transport_error(exc, origin, "send", timeouts=limit) from exc
