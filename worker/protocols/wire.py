"""What goes over the wire: the request, the codec that builds it, and the body of the
text-generation route that ``hf`` and ``tgi`` share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from core.contract import GenerateRequest, GenerationParams

__all__ = ["Codec", "PromptRoute", "Route", "WireRequest", "text_generation"]

Route = Literal["text_generation", "completions", "chat"]
PromptRoute = Literal["completions", "chat"]


@dataclass(frozen=True)
class WireRequest:
    """What goes over the wire: where, what, and which shape the answer takes."""

    url: str
    body: dict[str, Any]
    route: Route


class Codec(Protocol):
    """One upstream protocol's way of asking for a generation."""

    def request(
        self,
        base_url: str,
        model: str,
        request: GenerateRequest,
        prompt_route: PromptRoute | None,
    ) -> WireRequest:
        """The request for one generation; ``prompt_route`` None: the protocol's default."""
        ...


def text_generation(text: str, params: GenerationParams) -> dict[str, Any]:
    """The body of HF's ``/models/{model}`` and TGI's ``/generate``: ``max_new_tokens``."""
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
