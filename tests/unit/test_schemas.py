"""Request validation: the contract models and the settings-driven limits."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import SecretStr, ValidationError

from api.auth import authenticate, owner_of
from api.schemas import check_limits
from core.contract import GenerateRequest, JobMessage, JobStatus
from core.settings import Settings


def test_minimal_request_gets_default_params() -> None:
    """A prompt alone is a valid request with default sampling parameters."""
    request = GenerateRequest.model_validate({"prompt": "hi"})
    assert request.params.max_new_tokens == 256
    assert request.context == []


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": ""},
        {"prompt": "x", "params": {"top_p": 0}},
        {"prompt": "x", "params": {"stop": ["a"] * 9}},
        {"prompt": "x", "context": [{"id": "", "text": "t"}]},
        {"prompt": "x", "extra": True},
    ],
)
def test_invalid_requests_are_refused(body: dict[str, object]) -> None:
    """Empty prompts, out-of-range params, bad context and unknown fields do not validate."""
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate(body)


def test_limits_from_settings_name_the_field() -> None:
    """A prompt over GENQ_MAX_PROMPT_CHARS is a validation error located at body.prompt."""
    settings = Settings(max_prompt_chars=10)
    with pytest.raises(RequestValidationError) as info:
        check_limits(GenerateRequest(prompt="x" * 11), settings)
    assert info.value.errors()[0]["loc"] == ("body", "prompt")
    check_limits(GenerateRequest(prompt="x" * 10), settings)


def test_job_message_round_trips_through_json() -> None:
    """A task payload survives JSON, as Celery carries it."""
    message = JobMessage(job_id="j1", request=GenerateRequest(prompt="p"))
    assert JobMessage.model_validate_json(message.model_dump_json()) == message


def test_final_statuses() -> None:
    """Only succeeded and failed are final."""
    assert [s for s in JobStatus if s.is_final] == [JobStatus.SUCCEEDED, JobStatus.FAILED]


def test_authentication_matches_configured_keys_only() -> None:
    """A configured key authenticates with its owner digest; others do not; admin is flagged."""
    settings = Settings(api_keys="user-key", admin_api_keys="admin-key")  # type: ignore[arg-type]
    user = authenticate("user-key", settings)
    assert user is not None and not user.admin and user.owner == owner_of("user-key")
    admin = authenticate("admin-key", settings)
    assert admin is not None and admin.admin
    assert authenticate("user-ke", settings) is None
    assert "user-key" not in owner_of("user-key")


def test_only_allowed_models_may_be_named() -> None:
    """With GENQ_ALLOWED_MODELS set, another model is a 422 at body.model; the default passes."""
    settings = Settings(allowed_models="org/a", upstream_model="org/default")  # type: ignore[arg-type]
    with pytest.raises(RequestValidationError) as info:
        check_limits(GenerateRequest(prompt="x", model="org/other"), settings)
    assert info.value.errors()[0]["loc"] == ("body", "model")
    check_limits(GenerateRequest(prompt="x", model="org/a"), settings)
    check_limits(GenerateRequest(prompt="x", model="org/default"), settings)
    check_limits(GenerateRequest(prompt="x", model="anything"), Settings())


@pytest.mark.parametrize(
    "model", ["gpt2", "org/name-1.5_b", "meta-llama/Llama-3.1-8B-Instruct:novita"]
)
def test_repo_ids_are_models(model: str) -> None:
    """Hugging Face repo ids (with an optional :provider) are accepted as models."""
    assert GenerateRequest(prompt="p", model=model).model == model


@pytest.mark.parametrize(
    "model", ["../_sim/reset", "a/b/c", "/lead", "trail/", "a..b", "sp ace", "org/../x", "%2e%2e"]
)
def test_a_model_is_never_a_path(model: str) -> None:
    """Anything that could walk the upstream URL (.., a second /, odd characters) is refused."""
    with pytest.raises(ValidationError):
        GenerateRequest(prompt="p", model=model)


def test_production_serves_only_the_configured_model_by_default() -> None:
    """With no GENQ_ALLOWED_MODELS, production serves the default model alone; development any."""
    keys = [SecretStr("k" * 20)]
    production = Settings(env="production", api_keys=keys, upstream_model="org/m")
    assert production.served_models == {"org/m"}
    assert Settings(env="development").served_models is None
    listed = Settings(allowed_models=["org/a"], upstream_model="org/m")
    assert listed.served_models == {"org/a", "org/m"}
