"""One codec per upstream protocol: the request genq sends, and what it reads back.

=========  =====================================================  ========================
protocol   a prompt job                                           a chat job
=========  =====================================================  ========================
openai     ``/v1/chat/completions``, the prompt as one user        ``/v1/chat/completions``
           message (``GENQ_UPSTREAM_PROMPT_ROUTE=chat``, the
           default), or ``/v1/completions`` (``completions``)
tgi        ``/generate`` (``completions``, the default), or        ``/v1/chat/completions``
           ``/v1/chat/completions`` (``chat``)
hf         ``/models/{model}`` (text generation)                   the same, the messages
                                                                   rendered into one prompt
=========  =====================================================  ========================

Parameters go by each route's own names: ``max_tokens`` on OpenAI-compatible routes,
``max_new_tokens`` on text generation; ``stop``, ``seed``, ``temperature``, ``top_p``.
Answers give the text, ``usage`` (prompt and completion tokens, when reported) and
``finish_reason`` (``stop`` or ``length``; TGI's ``eos_token`` and ``stop_sequence`` read
as ``stop``). What the model is sent comes from ``worker.prompt`` (context documents).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from core.contract import GenerateRequest, GenerationParams
from core.errors import UpstreamMalformed
from core.settings import Protocol
from worker.prompt import model_input, render_chat

__all__ = ["Answer", "Route", "WireRequest", "build_request", "parse_response"]

Route = Literal["text_generation", "completions", "chat"]
PromptRoute = Literal["completions", "chat"]
_DEFAULT_PROMPT_ROUTE: dict[str, PromptRoute] = {"openai": "chat", "tgi": "completions"}
_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


@dataclass(frozen=True)
class WireRequest:
    """What goes over the wire: where, what, and which shape the answer takes."""

    url: str
    body: dict[str, Any]
    route: Route


@dataclass(frozen=True)
class Answer:
    """What an upstream answer says."""

    text: str
    usage: dict[str, int] | None
    finish_reason: str | None


def build_request(
    protocol: Protocol,
    base_url: str,
    model: str,
    request: GenerateRequest,
    prompt_route: PromptRoute | None = None,
) -> WireRequest:
    """The request for one generation in ``protocol`` (see the module docstring)."""
    prompt, messages = model_input(request)
    params = request.params
    if protocol == "hf":
        text = prompt if prompt is not None else render_chat(messages or [])
        url = f"{base_url}/models/{quote(model, safe='/')}"
        return WireRequest(url, _text_generation(text, params), "text_generation")
    route = prompt_route or _DEFAULT_PROMPT_ROUTE[protocol]
    root = base_url.removesuffix("/v1")
    if prompt is not None and route == "completions":
        if protocol == "tgi":
            return WireRequest(
                f"{root}/generate", _text_generation(prompt, params), "text_generation"
            )
        body = {"model": model, "prompt": prompt, **_openai_params(params)}
        return WireRequest(f"{root}/v1/completions", body, "completions")
    chat = (
        [{"role": "user", "content": prompt}]
        if prompt is not None
        else [m.model_dump() for m in messages or []]
    )
    body = {"model": model, "messages": chat, **_openai_params(params)}
    return WireRequest(f"{root}/v1/chat/completions", body, "chat")


def _openai_params(params: GenerationParams) -> dict[str, Any]:
    body: dict[str, Any] = {
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    return body


def _text_generation(text: str, params: GenerationParams) -> dict[str, Any]:
    # HF and TGI refuse temperature 0 and top_p 1 ("must be > 0", "must be < 1"): the
    # neutral values are left out, which means the same thing to them.
    parameters: dict[str, Any] = {"max_new_tokens": params.max_new_tokens}
    if params.stop:
        parameters["stop"] = list(params.stop)
    if params.temperature > 0:
        parameters["temperature"] = params.temperature
    if params.top_p < 1.0:
        parameters["top_p"] = params.top_p
    if params.seed is not None:
        parameters["seed"] = params.seed
    parameters["return_full_text"] = False
    parameters["details"] = True  # finish_reason and token counts
    return {"inputs": text, "parameters": parameters}


def parse_response(route: Route, body: object, origin: str) -> Answer:
    """The answer in a 2xx JSON body of ``route``; UpstreamMalformed when it is not one."""
    if route == "text_generation":
        # HF answers a list; TGI, and HF models served by TGI, a single object.
        item = body[0] if isinstance(body, list) and body else body
        text = _get(item, "generated_text")
        details = _get(item, "details")
        usage = _counts({"completion_tokens": _get(details, "generated_tokens")})
        prefill = _get(details, "prefill")
        if isinstance(prefill, list) and prefill:
            usage = (usage or {}) | {"prompt_tokens": len(prefill)}
        reason = _get(details, "finish_reason")
        expected = '[{"generated_text": str}] or {"generated_text": str}'
    else:
        choices = _get(body, "choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        text = (
            _get(first, "text")
            if route == "completions"
            else _get(_get(first, "message"), "content")
        )
        usage = _counts(_get(body, "usage"))
        reason = _get(first, "finish_reason")
        expected = (
            '{"choices": [{"text": str}]}'
            if route == "completions"
            else ('{"choices": [{"message": {"content": str}}]}')
        )
    if not isinstance(text, str):
        raise UpstreamMalformed(
            f"malformed answer from {origin}: {type(body).__name__}, not {expected}"
        )
    finish = _FINISH.get(reason, reason) if isinstance(reason, str) else None
    return Answer(text, usage, finish)


def _get(value: object, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _counts(value: object) -> dict[str, int] | None:
    """The integer counts of a usage object (booleans, floats and NaN left out)."""
    if not isinstance(value, dict):
        return None
    counts = {
        k: v
        for k, v in value.items()
        if isinstance(v, int) and not isinstance(v, bool) and math.isfinite(v)
    }
    return counts or None
