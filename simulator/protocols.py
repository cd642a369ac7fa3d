"""The three wire protocols the simulator speaks: routes and request parsing.

No I/O, no faults (``simulator.behaviour``), no answers (``simulator.answers``). Routes,
as the official clients call them (``huggingface_hub.InferenceClient``,
``text_generation.Client``, ``openai``):

* hf: ``POST /models/{model}`` (the HF Inference API) with ``{"inputs", "parameters"}``.
* tgi: ``POST /generate``, and ``POST /``: TGI's compat route, where ``InferenceClient``
  and ``text_generation.Client`` post when given the server's URL; ``POST
  /generate_stream`` answers the same as server-sent events, a token each.
* openai: ``POST /v1/chat/completions`` (also TGI's and HF's chat route, and
  ``/models/{model}/v1/chat/completions``) with ``messages``, and ``POST /v1/completions``
  with ``prompt``; ``"stream": true`` answers server-sent chunks ending ``data: [DONE]``.

Parameters as the services define them: ``max_new_tokens`` / ``max_tokens`` /
``max_completion_tokens``, ``stop``, ``seed``, ``temperature``, ``top_p``,
``return_full_text`` / ``echo``, ``details``, ``decoder_input_details``, ``n``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = ["BadRequest", "Request", "Route", "parse_request", "route"]

Family = Literal["hf", "tgi", "openai"]
Kind = Literal["generate", "chat", "completion"]
DEFAULT_MODEL = "simulator/echo-1"
"""The model named in answers when the request names none (tgi) or cannot be read."""
DEFAULT_MAX_NEW_TOKENS = 20
"""Words generated when a request sets no limit (TGI's default ``max_new_tokens``)."""
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default ``max_tokens`` on ``/v1/completions``."""
CHAT_SUFFIX = "/v1/chat/completions"


class BadRequest(ValueError):
    """Raised when a generation request cannot be read: ``status`` 400 missing, 422 mistyped."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True)
class Route:
    """What a POST path addresses: whose protocol, which call, the model it names."""

    family: Family
    kind: Kind
    model: str | None = None  # named by the path (hf)
    listed: bool = False  # a generate answer is a one-item list (hf and TGI's "/")
    streamed: bool = False  # TGI's /generate_stream: the answer as server-sent events


@dataclass(frozen=True)
class Request:
    """What a generation call asks for, whatever its protocol."""

    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...]
    model: str
    full_text: bool = False  # hf/tgi ``return_full_text``, openai completions ``echo``
    seed: int | None = None
    details: bool = False  # hf/tgi ``details``: TGI's generation details in the answer
    prefill: bool = False  # hf/tgi ``decoder_input_details``: the prompt's tokens too
    choices: int = 1  # openai ``n``
    stream: bool = False  # answered as server-sent events (openai ``stream``, TGI's route)
    include_usage: bool = False  # openai ``stream_options.include_usage``: a usage event


def route(path: str) -> Route | None:
    """The route of a POST path; None for paths no protocol owns."""
    fixed: dict[str, Route] = {
        "/": Route("tgi", "generate", listed=True),
        "/generate": Route("tgi", "generate"),
        "/generate_stream": Route("tgi", "generate", streamed=True),
        CHAT_SUFFIX: Route("openai", "chat"),
        "/v1/completions": Route("openai", "completion"),
    }
    if path in fixed:
        return fixed[path]
    model = path.removeprefix("/models/")
    if model == path or not model.strip("/"):
        return None
    if model.endswith(CHAT_SUFFIX) and (named := model.removesuffix(CHAT_SUFFIX)):
        return Route("openai", "chat", model=named)
    return Route("hf", "generate", model=model, listed=True)


def parse_request(route: Route, raw: bytes) -> Request:
    """The request in ``raw``, a body in ``route``'s shape; raises BadRequest."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(422, "request body must be a JSON object")
    if route.kind == "generate":
        streamed = route.streamed or _flag(body, "stream")  # TGI's "/" streams when asked
        if streamed and route.family != "tgi":
            raise BadRequest(422, "the simulator's hf route does not stream", "stream")
        parsed = _parse_generate(body, route.model or DEFAULT_MODEL)
        return replace(parsed, stream=streamed)
    model = body.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        raise BadRequest(422, "'model' must be a non-empty string", "model")
    _check_sampling(body, strict=False)
    common: dict[str, Any] = {
        "stop": _stop(body.get("stop")),
        "model": route.model or model,
        "seed": _integer(body, "seed"),
        "choices": _integer(body, "n", low=1) or 1,
        "stream": _flag(body, "stream"),
        "include_usage": _flag(_object(body, "stream_options"), "include_usage"),
    }
    if route.kind == "completion":
        limit = _max_tokens(body.get("max_tokens"), COMPLETIONS_DEFAULT_MAX_TOKENS)
        return Request(_completion_prompt(body), limit, full_text=_flag(body, "echo"), **common)
    newer = body.get("max_completion_tokens")  # OpenAI's newer name wins over max_tokens
    limit = _max_tokens(body.get("max_tokens") if newer is None else newer)
    return Request(_chat_prompt(body), limit, **common)


def _parse_generate(body: dict[str, Any], model: str) -> Request:
    if "inputs" not in body:
        raise BadRequest(400, "missing field 'inputs'", "inputs")
    inputs, params = body["inputs"], body.get("parameters") or {}
    if not isinstance(inputs, str) or not isinstance(params, dict):
        raise BadRequest(422, "'inputs' must be a string and 'parameters' an object")
    _check_sampling(params, strict=True)
    return Request(
        inputs,
        _max_tokens(params.get("max_new_tokens")),
        _stop(params.get("stop")),
        model,
        full_text=_flag(params, "return_full_text"),
        seed=_integer(params, "seed"),
        details=_flag(params, "details"),
        prefill=_flag(params, "decoder_input_details"),
    )


def _chat_prompt(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if messages is None:
        raise BadRequest(400, "missing field 'messages'", "messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest(422, "'messages' must be a list of objects", "messages")
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise BadRequest(400, "'messages' has no message with role 'user'", "messages")
    content = users[-1].get("content")
    if isinstance(content, list) and all(
        isinstance(part, dict) and isinstance(part.get("text"), str) for part in content
    ):
        content = " ".join(part["text"] for part in content)  # [{"type": "text", "text"}]
    if not isinstance(content, str):
        raise BadRequest(422, "the last user message's 'content' must be text", "messages")
    return content


def _completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest(400, "missing field 'prompt'", "prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest(422, "'prompt' must be a string (the simulator takes one)", "prompt")
    return prompt


def _check_sampling(params: dict[str, Any], *, strict: bool) -> None:
    for name in ("temperature", "top_p"):
        value = params.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise BadRequest(422, f"'{name}' must be a number", name)
        # HF and TGI refuse the neutral values OpenAI accepts: 0 < temperature, 0 < top_p < 1.
        if strict and value is not None and (value <= 0 or (name == "top_p" and value >= 1)):
            raise BadRequest(422, f"'{name}' is out of range for this protocol: {value}", name)


def _max_tokens(value: object, default: int = DEFAULT_MAX_NEW_TOKENS) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(422, "the token limit must be a non-negative integer", "max_tokens")
    return value


def _integer(params: dict[str, Any], name: str, low: int = 0) -> int | None:
    value = params.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        return value
    raise BadRequest(422, f"'{name}' must be an integer of at least {low}", name)


def _object(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name) or {}
    if isinstance(value, dict):
        return value
    raise BadRequest(422, f"'{name}' must be an object", name)


def _flag(params: dict[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise BadRequest(422, f"'{name}' must be a boolean", name)


def _stop(value: object) -> tuple[str, ...]:
    if value is None or isinstance(value, str):
        return () if value is None else (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise BadRequest(422, "'stop' must be a string or a list of strings", "stop")
