"""The ``openai`` codec: OpenAI-compatible chat and text completions.

A prompt goes to ``/v1/chat/completions`` as one user message (the default) or to
``/v1/completions``; a chat job's messages go to chat. TGI's Messages API is the same
chat route, so ``worker.protocols.tgi`` builds it with :func:`chat_request`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from core.contract import ChatMessage, GenerateRequest, GenerationParams
from worker.prompt import model_input
from worker.protocols.wire import PromptRoute, WireRequest

__all__ = ["OpenAICodec", "chat_request", "openai_params"]


class OpenAICodec:
    """``openai``: chat completions by default, text completions for a prompt on request."""

    default_route: ClassVar[PromptRoute] = "chat"

    def request(
        self,
        base_url: str,
        model: str,
        request: GenerateRequest,
        prompt_route: PromptRoute | None,
    ) -> WireRequest:
        """The request for one generation (see the module docstring)."""
        prompt, messages = model_input(request)
        root = base_url.removesuffix("/v1")
        if prompt is not None and (prompt_route or self.default_route) == "completions":
            body = {"model": model, "prompt": prompt, **openai_params(request.params)}
            return WireRequest(f"{root}/v1/completions", body, "completions")
        return chat_request(root, model, prompt, messages, request.params)


def chat_request(
    root: str,
    model: str,
    prompt: str | None,
    messages: list[ChatMessage] | None,
    params: GenerationParams,
) -> WireRequest:
    """``/v1/chat/completions`` under ``root`` (the endpoint without ``/v1``): the prompt
    as one user message, or the job's messages."""
    chat = (
        [{"role": "user", "content": prompt}]
        if prompt is not None
        else [m.model_dump() for m in messages or []]
    )
    body = {"model": model, "messages": chat, **openai_params(params)}
    return WireRequest(f"{root}/v1/chat/completions", body, "chat")


def openai_params(params: GenerationParams) -> dict[str, Any]:
    """The parameters by OpenAI's names: ``max_tokens``, and ``stop`` and ``seed`` when set."""
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
