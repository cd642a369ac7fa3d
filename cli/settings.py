"""Where the CLI finds genq: ``GENQ_API_URL`` and ``GENQ_API_KEY`` (or ``--api-url`` /
``--api-key``), read once by one pydantic-settings class."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_API_URL", "CliSettings"]

DEFAULT_API_URL = "http://127.0.0.1:8000"


class CliSettings(BaseSettings):
    """The API's base URL and the bearer key; the key is a secret and never shown."""

    # hide_input_in_errors: a rejected value may be the key itself.
    model_config = SettingsConfigDict(
        env_prefix="GENQ_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    api_url: str = DEFAULT_API_URL
    """Base URL of genq's HTTP API, without ``/v1``."""
    api_key: SecretStr | None = None
    """Bearer key for ``/v1``; an admin key for ``genq circuits open|close|reset``."""

    @field_validator("api_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("the API URL (GENQ_API_URL, --api-url) must be http:// or https://")
        return value.strip().rstrip("/")

    @classmethod
    def load(cls, api_url: str | None = None, api_key: str | None = None) -> CliSettings:
        """The environment's settings, with the options that were given instead."""
        given: dict[str, Any] = {"api_url": api_url, "api_key": api_key}
        return cls(**{k: v for k, v in given.items() if v is not None})
