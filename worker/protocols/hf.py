"""The ``hf`` codec: the Hugging Face Inference API's text generation.

Every job goes to ``/models/{model}`` (the model's slashes kept, the rest quoted); a chat
job's messages are rendered into one prompt (``worker.prompt.render_chat``). There is one
route, so the prompt route does not apply.
"""

from __future__ import annotations

from urllib.parse import quote

from core.contract import GenerateRequest
from worker.prompt import model_input, render_chat
from worker.protocols.wire import PromptRoute, WireRequest, text_generation

__all__ = ["HFCodec"]


class HFCodec:
    """``hf``: text generation at ``/models/{model}`` for prompt and chat jobs alike."""

    def request(
        self,
        base_url: str,
        model: str,
        request: GenerateRequest,
        prompt_route: PromptRoute | None,
    ) -> WireRequest:
        """The request for one generation (see the module docstring)."""
        prompt, messages = model_input(request)
        text = prompt if prompt is not None else render_chat(messages or [])
        url = f"{base_url}/models/{quote(model, safe='/')}"
        return WireRequest(url, text_generation(text, request.params), "text_generation")
