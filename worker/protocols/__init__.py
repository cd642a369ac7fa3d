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

Layout: ``openai.py``, ``tgi.py`` and ``hf.py`` (a codec each: the request for one
generation), ``wire.py`` (the request, the codec interface, the text-generation body),
``answers.py`` (an answer is read by its route, not its protocol: TGI's chat route
answers in OpenAI's shape).
"""

from __future__ import annotations

from core.contract import GenerateRequest
from core.settings import Protocol
from worker.protocols.answers import Answer, parse_response
from worker.protocols.hf import HFCodec
from worker.protocols.openai import OpenAICodec
from worker.protocols.tgi import TGICodec
from worker.protocols.wire import Codec, PromptRoute, Route, WireRequest

__all__ = [
    "CODECS",
    "Answer",
    "Codec",
    "PromptRoute",
    "Route",
    "WireRequest",
    "build_request",
    "parse_response",
]

CODECS: dict[Protocol, Codec] = {"openai": OpenAICodec(), "tgi": TGICodec(), "hf": HFCodec()}
"""The codec of each protocol (``GENQ_UPSTREAM_PROTOCOL``)."""


def build_request(
    protocol: Protocol,
    base_url: str,
    model: str,
    request: GenerateRequest,
    prompt_route: PromptRoute | None = None,
) -> WireRequest:
    """The request for one generation in ``protocol`` (see the package docstring)."""
    return CODECS[protocol].request(base_url, model, request, prompt_route)
