"""Settings: typed, prefixed, and refusing what cannot work together."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from core.settings import Settings


def make(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in [n for n in os.environ if n.startswith("GENQ_")]:
        monkeypatch.delenv(name)  # only what the test sets counts
    for name, value in env.items():
        monkeypatch.setenv(f"GENQ_{name}", value)
    return Settings()


def test_defaults_are_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no GENQ_* variables, settings load with development defaults."""
    settings = make(monkeypatch)
    assert settings.env == "development"
    assert settings.upstream_protocol == "hf"
    assert settings.max_prompt_chars == 32_000
    assert settings.visibility_timeout_s > settings.task_time_limit_s


def test_api_keys_are_comma_separated_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """GENQ_API_KEYS splits on commas and never shows a key in repr."""
    settings = make(monkeypatch, API_KEYS="alpha-key, beta-key")
    assert [k.get_secret_value() for k in settings.api_keys] == ["alpha-key", "beta-key"]
    assert "alpha-key" not in repr(settings)


def test_token_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """GENQ_UPSTREAM_TOKEN is a SecretStr, hidden in repr and str."""
    settings = make(monkeypatch, UPSTREAM_TOKEN="hf_supersecret")
    assert settings.upstream_token is not None
    assert "hf_supersecret" not in repr(settings) + str(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"UPSTREAM_PROTOCOL": "grpc"}, "upstream_protocol"),
        ({"UPSTREAM_TIMEOUT_S": "0"}, "upstream_timeout_s"),
        ({"UPSTREAM_URL": "not a url"}, "upstream_url"),
        ({"REDIS_URL": "http://localhost"}, "redis_url"),
        ({"VISIBILITY_TIMEOUT_S": "60"}, "VISIBILITY_TIMEOUT"),
        ({"TASK_SOFT_TIME_LIMIT_S": "95"}, "SOFT_TIME_LIMIT"),
        ({"UPSTREAM_TIMEOUT_S": "61"}, "UPSTREAM_TIMEOUT"),
        ({"BREAKER_FAIL_MAX": "-1"}, "breaker_fail_max"),
        ({"RETRY_BASE_S": "40"}, "RETRY_BASE_S"),
        ({"BREAKER_MAX_RESET_TIMEOUT_S": "10"}, "MAX_RESET_TIMEOUT"),
        ({"BREAKER_WINDOW_S": "10"}, "together"),
    ],
)
def test_bad_values_fail_at_start_up(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    """A value of the wrong type, range or combination is refused, naming what is wrong."""
    with pytest.raises(ValidationError, match=message):
        make(monkeypatch, **env)


def test_production_refuses_placeholder_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside development, missing, placeholder or short keys are refused."""
    with pytest.raises(ValidationError, match="must be set"):
        make(monkeypatch, ENV="production")
    with pytest.raises(ValidationError, match="placeholder"):
        make(monkeypatch, ENV="production", API_KEYS="changeme")
    settings = make(monkeypatch, ENV="production", API_KEYS="k" * 32)
    assert settings.env == "production"
