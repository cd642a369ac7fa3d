"""The simulator's answers: generated text, 200 bodies and error bodies, per protocol.

No I/O and no faults. Bodies are shaped as the official clients parse them: hf and tgi
generate answers carry TGI's ``details`` (``finish_reason``, ``generated_tokens``, ``seed``,
``prefill``, ``tokens``); openai answers carry ``usage``, ``finish_reason`` (``length``
when the token limit cut the text, else ``stop``), ``logprobs`` and ``system_fingerprint``
(TGI's client requires both). Errors: hf ``{"error"}``, tgi ``{"error", "error_type"}``
for the statuses TGI itself answers, openai ``{"error": {"message", "type", "param",
"code"}}``.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from simulator.protocols import Family, Request, Route

__all__ = [
    "SYSTEM_FINGERPRINT",
    "context_error",
    "error_body",
    "render",
    "simulated_text",
    "stream_events",
]

SYSTEM_FINGERPRINT = "simulator-1"


def simulated_text(prompt: str, max_new_tokens: int, *, stop: Iterable[str] = ()) -> str:
    """``"simulated:"`` and the prompt's words reversed, at most ``max_new_tokens`` of them.

    The text is cut just before the earliest occurrence of any non-empty ``stop`` string.
    """
    words = prompt.split()[::-1][: max(max_new_tokens, 0)]
    text = " ".join(["simulated:", *words])
    cuts = [index for s in stop if s and (index := text.find(s)) >= 0]
    return text[: min(cuts)] if cuts else text


@dataclass(frozen=True)
class _Generated:
    text: str  # the generated text alone, never the prompt
    finish: Literal["length", "stop", "eos"]  # cut by the token limit, a stop string, or done


def _generate(request: Request) -> _Generated:
    text = simulated_text(request.prompt, request.max_new_tokens, stop=request.stop)
    if text != simulated_text(request.prompt, request.max_new_tokens):
        return _Generated(text, "stop")
    cut = len(request.prompt.split()) > max(request.max_new_tokens, 0)
    return _Generated(text, "length" if cut else "eos")


def render(route: Route, request: Request) -> object:
    """The 200 body answering ``request`` on ``route``."""
    generated = _generate(request)
    text = f"{request.prompt} {generated.text}" if request.full_text else generated.text
    if route.kind == "generate":
        answer: dict[str, object] = {"generated_text": text}
        if request.details or not route.listed:  # genq reads /generate's details
            answer["details"] = _details(request, generated)
        return [answer] if route.listed else answer
    finish = "length" if generated.finish == "length" else "stop"
    prompt_tokens, completion_tokens = len(request.prompt.split()), len(generated.text.split())
    completion_tokens *= request.choices
    chat = route.kind == "chat"
    choices = [
        {
            "index": index,
            **({"message": {"role": "assistant", "content": text}} if chat else {"text": text}),
            "logprobs": None,
            "finish_reason": finish,
        }
        for index in range(request.choices)
    ]
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-sim-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def stream_events(route: Route, request: Request) -> list[object]:
    """The server-sent events answering ``request`` on ``route``, a word each: OpenAI's
    chunks (a last one with ``finish_reason``, then ``usage`` when asked; the caller
    ends with ``[DONE]``) or TGI's ``/generate_stream`` tokens (the last with
    ``generated_text`` and ``details``)."""
    generated = _generate(request)
    words = [_token(word, i) for i, word in enumerate(generated.text.split())]
    if route.kind == "generate":
        events: list[object] = [
            {
                "index": i + 1,
                "token": {**word, "special": False},
                "generated_text": None,
                "details": None,
            }
            for i, word in enumerate(words)
        ]
        if events:
            details = _details(request, generated)
            last = {**events[-1], "generated_text": generated.text}  # type: ignore[dict-item]
            details = {k: details[k] for k in ("finish_reason", "generated_tokens", "seed")}
            events[-1] = {**last, "details": details}
        return events
    chat = route.kind == "chat"
    ident = f"{'chatcmpl' if chat else 'cmpl'}-sim-{uuid.uuid4().hex[:16]}"
    head = {
        "id": ident,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def chunk(text: str | None, finish: str | None) -> dict[str, object]:
        delta: dict[str, object] = {"content": text} if text is not None else {}
        choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": text or ""}
        return {**head, "choices": [{**choice, "logprobs": None, "finish_reason": finish}]}

    events = [chunk(str(word["text"]), None) for word in words]
    events.append(chunk(None, "length" if generated.finish == "length" else "stop"))
    if request.include_usage:
        prompt_tokens, completion_tokens = len(request.prompt.split()), len(words)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        events.append({**head, "choices": [], "usage": usage})
    return events


def _details(request: Request, generated: _Generated) -> dict[str, object]:
    """TGI's ``details``: ``finish_reason`` is ``length``, ``stop_sequence`` or ``eos_token``."""
    finish = {"length": "length", "stop": "stop_sequence", "eos": "eos_token"}[generated.finish]
    tokens = [
        {**_token(word, i), "special": False} for i, word in enumerate(generated.text.split())
    ]
    words = request.prompt.split() if request.prefill else []
    prefill = [{**_token(w, i), "logprob": None if i == 0 else 0.0} for i, w in enumerate(words)]
    return {
        "finish_reason": finish,
        "generated_tokens": len(tokens),
        "seed": request.seed,
        "prefill": prefill,  # the first token has no logprob
        "tokens": tokens,
    }


def _token(word: str, index: int) -> dict[str, object]:
    text = word if index == 0 else f" {word}"
    return {"id": zlib.crc32(text.encode()) % 32000, "text": text, "logprob": 0.0}


_DEFAULT_MESSAGES: dict[int, tuple[str, str]] = {  # status: (hf and tgi, openai)
    401: (
        "Authorization header is correct, but the token seems invalid",
        "Incorrect API key provided (simulated)",
    ),
    429: ("Rate limit reached", "Rate limit reached for requests (simulated)"),
    500: ("Internal Server Error (simulated)", "The server had an error (simulated)"),
    503: ("Service Unavailable (simulated outage)", "Service Unavailable (simulated outage)"),
}
_TGI_ERRORS: dict[int, tuple[str, str]] = {  # errors TGI itself answers, with error_type
    400: ("validation", ""),
    422: ("validation", ""),
    424: ("generation", "Request failed during generation (simulated)"),
    429: ("overloaded", "Model is overloaded"),
    500: ("incomplete_generation", "Incomplete generation (simulated)"),
}
_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {  # status: (type, code)
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def error_body(
    family: Family, status: int, message: str | None = None, param: str | None = None
) -> dict[str, object]:
    """An error answer in ``family``'s shape; ``message`` None means the status's default."""
    hf_text, openai_text = _DEFAULT_MESSAGES.get(status, (f"simulated HTTP {status}",) * 2)
    if family == "openai":
        default = ("server_error" if status >= 500 else "invalid_request_error", None)
        kind, code = _OPENAI_ERRORS.get(status, default)
        text = message or openai_text
        return {"error": {"message": text, "type": kind, "param": param, "code": code}}
    if family == "tgi" and status in _TGI_ERRORS:
        error_type, tgi_text = _TGI_ERRORS[status]
        return {"error": message or tgi_text or hf_text, "error_type": error_type}
    return {"error": message or hf_text}


def context_error(route: Route, request: Request, limit: int) -> tuple[int, object] | None:
    """The answer refusing ``request`` when prompt plus token limit exceed ``limit`` tokens."""
    prompt, wanted = len(request.prompt.split()), request.max_new_tokens
    if prompt + wanted <= limit:
        return None
    if route.family != "openai":  # what TGI answers, also behind the HF API
        text = (
            f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {limit}. "
            f"Given: {prompt} `inputs` tokens and {wanted} `max_new_tokens`"
        )
        return 422, {"error": text, "error_type": "validation"}
    if route.kind == "chat":  # llama-cpp-python's words, as recorded
        text = (
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt + wanted} tokens ({prompt} in the messages, {wanted} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    else:
        text = (
            f"This model's maximum context length is {limit} tokens, however you requested "
            f"{prompt + wanted} tokens ({prompt} in your prompt; {wanted} for the completion). "
            "Please reduce your prompt; or completion length."
        )
    error = {"message": text, "type": "invalid_request_error", "param": "messages"}
    return 400, {"error": {**error, "code": "context_length_exceeded"}}
