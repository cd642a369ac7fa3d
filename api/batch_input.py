"""A batch's input file, line by line: OpenAI request lines turned into genq jobs, or
the reasons they cannot be.

Each line is ``{"custom_id", "method": "POST", "url", "body"}``, ``url`` the batch's
endpoint. ``/v1/completions`` bodies carry ``prompt``; ``/v1/chat/completions`` bodies
carry ``messages`` (a ``developer`` message is a system message). Both take ``model``,
``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p``, ``stop``,
``seed``, and genq's own ``context``, ``context_mode``, ``cache``, ``fallback`` and
``failover`` (a line's own wins over its batch's ``BatchPolicy``);
``n`` (1), ``stream`` (false) and ``user`` are accepted and change nothing. Anything
else is an error, so that a file written for another service does not silently mean
something else here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
)

from api.schemas import limit_errors
from core.batches import BatchError
from core.contract import (
    MAX_STOP_CHARS,
    BatchEndpoint,
    CachePolicy,
    ContextDoc,
    ContextMode,
    FailoverPolicy,
    FallbackPolicy,
    GenerateRequest,
    GenerationParams,
    JsonNumber,
    ModelId,
    Text,
)
from core.contract import ChatMessage as Message
from core.openai_batch import request_lines
from core.settings import Settings

__all__ = [
    "MAX_LISTED_ERRORS",
    "BatchPolicy",
    "ChatBody",
    "ChatFields",
    "CompletionBody",
    "CompletionFields",
    "InputLine",
    "parse_lines",
    "to_request",
]

MAX_LISTED_ERRORS = 100
"""A failed batch lists at most this many errors (the first ones)."""


Stop = Annotated[Text, Field(min_length=1, max_length=MAX_STOP_CHARS)]
"""A stop sequence, bounded as ``GenerationParams`` bounds it."""


def _not_streamed(stream: object) -> object:
    """``stream`` as a JSON boolean, and false: a batch's answers are not streamed."""
    if stream is True:
        raise ValueError("a batch's answers are not streamed: stream must be false")
    if not isinstance(stream, bool):
        raise ValueError("must be a JSON boolean")
    return stream


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelId | None = None
    # Numbers as JSON types them (``JsonNumber``): true is not 1, "5" not 5.
    max_tokens: Annotated[int, Field(ge=1, le=8192), JsonNumber] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=8192), JsonNumber] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0), JsonNumber] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0), JsonNumber] | None = None
    stop: Stop | Annotated[list[Stop], Field(max_length=8)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**53 - 1), JsonNumber] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=1)] | None = None
    user: str | None = None
    context: list[ContextDoc] = Field(default_factory=list)
    cache: CachePolicy = "fallback"
    fallback: FallbackPolicy | None = None
    failover: FailoverPolicy | None = None
    context_mode: ContextMode = "prompt"


class CompletionFields(_Body):
    """A completion's body, ``stream`` aside."""

    prompt: Text = Field(min_length=1)


class CompletionBody(CompletionFields):
    """A batch line's completion body: never streamed."""

    stream: Annotated[Literal[False], BeforeValidator(_not_streamed)] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer"]
    content: Text


class ChatFields(_Body):
    """A chat completion's body, ``stream`` aside."""

    messages: list[ChatMessage] = Field(min_length=1)


class ChatBody(ChatFields):
    """A batch line's chat completion body: never streamed."""

    stream: Annotated[Literal[False], BeforeValidator(_not_streamed)] | None = None


class InputLine(BaseModel):
    """One request line of a batch input file."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]


class _CompletionLine(InputLine):
    url: Literal["/v1/completions"]
    body: CompletionBody  # type: ignore[assignment]


class _ChatLine(InputLine):
    url: Literal["/v1/chat/completions"]
    body: ChatBody  # type: ignore[assignment]


_TYPED_LINES: dict[BatchEndpoint, type[_CompletionLine | _ChatLine]] = {
    "/v1/completions": _CompletionLine,
    "/v1/chat/completions": _ChatLine,
}
"""A good line of each endpoint's files, read in one pass (``_line``)."""


@dataclass(frozen=True)
class BatchPolicy:
    """What a batch's ``metadata`` sets for every line that does not say: its
    ``fallback`` (``genq_fallback``) and its ``failover`` (``genq_failover``)."""

    fallback: FallbackPolicy = "auto"
    failover: FailoverPolicy = "auto"


@dataclass
class Parsed:
    """What a file's lines came to: (custom_id, request) per line, or errors."""

    requests: list[tuple[str, GenerateRequest]] = field(default_factory=list)
    errors: list[BatchError] = field(default_factory=list)
    error_count: int = 0

    def fail(self, line: int, code: str, message: str, param: str | None = None) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(BatchError(code=code, line=line, message=message, param=param))


def parse_lines(
    lines: Iterable[bytes],
    endpoint: BatchEndpoint,
    settings: Settings,
    batch: BatchPolicy,
) -> Parsed:
    """Every line checked; the requests are only meant to be used when there is no error."""
    parsed, seen = Parsed(), set[str]()
    for number, raw in request_lines(lines):
        request = _one(raw, number, endpoint, settings, batch, parsed)
        if request is None:
            continue
        custom_id, job = request
        if custom_id in seen:
            parsed.fail(number, "duplicate_custom_id", f"custom_id {custom_id!r} is used twice")
            continue
        seen.add(custom_id)
        parsed.requests.append((custom_id, job))
    if not parsed.requests and not parsed.error_count:
        parsed.fail(1, "empty_file", "the input file holds no request lines")
    return parsed


def _one(
    raw: bytes,
    number: int,
    endpoint: BatchEndpoint,
    settings: Settings,
    batch: BatchPolicy,
    parsed: Parsed,
) -> tuple[str, GenerateRequest] | None:
    line = _line(raw, number, endpoint, parsed)
    if line is None:
        return None
    custom_id, body = line
    try:
        request = to_request(body, batch)
    except ValidationError as exc:
        _report(parsed, number, exc, prefix="body.")
        return None
    problems = limit_errors(request, settings)
    for param, message in problems:
        parsed.fail(number, "invalid_value", message, f"body.{param}")
    return None if problems else (custom_id, request)


def _line(
    raw: bytes, number: int, endpoint: BatchEndpoint, parsed: Parsed
) -> tuple[str, CompletionBody | ChatBody] | None:
    """A line's ``custom_id`` and body, or None with its errors reported.

    A good line is read in one pass of pydantic-core (JSON and the body's model at once:
    a third of the time of decoding, then validating the line, then its body). A line it
    refuses is read again step by step, for errors that say which step failed."""
    try:
        typed = _TYPED_LINES[endpoint].model_validate_json(raw)
        return typed.custom_id, typed.body
    except ValidationError:
        pass
    try:
        line = InputLine.model_validate(json.loads(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ValidationError):
            _report(parsed, number, exc, prefix="")
        else:
            parsed.fail(number, "invalid_json_line", "the line is not one JSON object")
        return None
    if line.url != endpoint:
        message = f"url {line.url!r} differs from the batch's endpoint {endpoint!r}"
        parsed.fail(number, "invalid_url", message, "url")
        return None
    try:
        body: CompletionBody | ChatBody
        if endpoint == "/v1/completions":
            body = CompletionBody.model_validate(line.body)
        else:
            body = ChatBody.model_validate(line.body)
    except ValidationError as exc:
        _report(parsed, number, exc, prefix="body.")
        return None
    return line.custom_id, body


def to_request(body: CompletionFields | ChatFields, batch: BatchPolicy) -> GenerateRequest:
    """The genq job of an OpenAI body; ValidationError when genq's own checks refuse it
    (a model id, a stop sequence's length, text that is not Unicode). Only what the body
    (or the batch) says is set on it, so ``model_dump_json(exclude_unset=True)`` writes
    the job compactly without comparing every field with its default."""
    params: dict[str, Any] = {}
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        params["max_new_tokens"] = max_tokens
    for name in ("temperature", "top_p", "seed"):
        if getattr(body, name) is not None:
            params[name] = getattr(body, name)
    if body.stop is not None:
        params["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    asked: dict[str, Any]
    if isinstance(body, CompletionFields):
        asked = {"prompt": body.prompt}
    else:
        asked = {"messages": [_message(m) for m in body.messages]}
    if params:  # validated on its own: an error names the body's field ("stop")
        asked["params"] = GenerationParams.model_validate(params)
    for name in ("model", "context", "cache", "context_mode"):
        if name in body.model_fields_set:
            asked[name] = getattr(body, name)
    policies = {"fallback": body.fallback or batch.fallback}
    policies["failover"] = body.failover or batch.failover
    for name, value in policies.items():
        if value != GenerateRequest.model_fields[name].default:
            asked[name] = value
    return GenerateRequest(**asked)


def _message(message: ChatMessage) -> Message:
    role = "system" if message.role == "developer" else message.role
    return Message(role=role, content=message.content)


_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unsupported_parameter"}


def _report(parsed: Parsed, number: int, exc: ValidationError, prefix: str) -> None:
    for error in exc.errors(include_url=False, include_input=False):
        param = prefix + ".".join(str(part) for part in error["loc"])
        code = _CODES.get(error["type"], "invalid_value")
        parsed.fail(number, code, f"{param}: {error['msg']}", param)
