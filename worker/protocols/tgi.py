"""The ``tgi`` codec: Text Generation Inference.

A prompt goes to ``/generate`` (the default) or, with the ``chat`` prompt route, to the
Messages API ``/v1/chat/completions``, where a chat job's messages always go; that route
is OpenAI's, built by ``worker.protocols.openai``.
"""

from __future__ import annotations

from typing import ClassVar

from core.contract import GenerateRequest
from worker.prompt import model_input
from worker.protocols.openai import chat_request
from worker.protocols.wire import PromptRoute, WireRequest, text_generation

__all__ = ["TGICodec"]


class TGICodec:
    """``tgi``: ``/generate`` for a prompt by default, the Messages API for chat."""

    default_route: ClassVar[PromptRoute] = "completions"

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
            body = text_generation(prompt, request.params)
            return WireRequest(f"{root}/generate", body, "text_generation")
        return chat_request(root, model, prompt, messages, request.params)
