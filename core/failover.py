"""``GENQ_UPSTREAM_FAILOVER``: the targets tried, in order, after the primary.

A JSON list, each target ``{"url", "protocol", "model", "token_env"}`` and optionally
``prompt_route``. ``token_env`` names the environment variable that holds the target's
token (the JSON holds none): it must be set when genq starts. Example, a self-hosted TGI
primary with Hugging Face Inference Providers behind it::

    GENQ_UPSTREAM_PROTOCOL=tgi GENQ_UPSTREAM_URL=http://tgi:8080
    GENQ_UPSTREAM_FAILOVER='[{"url": "https://router.huggingface.co/v1",
      "protocol": "openai", "model": "meta-llama/Llama-3.1-8B-Instruct",
      "token_env": "HF_TOKEN"}]'

How a job moves between them is ``worker.router``'s.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from core.contract import ModelId

__all__ = ["FailoverTarget"]

Protocol = Literal["hf", "tgi", "openai"]


class FailoverTarget(BaseModel):
    """One failover target as configured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrl
    """Base URL of the endpoint, e.g. ``https://router.huggingface.co/v1``."""
    protocol: Protocol
    model: ModelId
    """The model this target answers with (a job's own ``model`` names the primary's)."""
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The environment variable holding the target's bearer token; None: no token."""
    prompt_route: Literal["completions", "chat"] | None = None
    """As ``GENQ_UPSTREAM_PROMPT_ROUTE``, for this target."""
