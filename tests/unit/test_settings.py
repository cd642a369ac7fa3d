"""Settings: typed, prefixed, and refusing what cannot work together."""

from __future__ import annotations

import json
import os

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

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
        ({"SWEEP_GRACE_S": "250"}, "SWEEP_GRACE_S"),
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


@pytest.mark.parametrize(
    ("env", "sentinel"),
    [
        ({"REDIS_URL": "redis://localhost:6379/0"}, False),
        ({"REDIS_URL": "redis://:pw@10.0.0.5:6380/2"}, False),
        ({"REDIS_URL": "rediss://user:pw@redis.example.com:6380/0"}, False),
        ({"REDIS_URL": "sentinel://h:1", "REDIS_SENTINEL_MASTER": "mymaster"}, True),
        (
            {
                "REDIS_URL": "sentinel://:pw@h:1;sentinel://h2:2",
                "REDIS_SENTINEL_MASTER": "mymaster",
                "REDIS_SENTINEL_PASSWORD": "sentinel-pw",
            },
            True,
        ),
    ],
)
def test_redis_url_accepts_redis_rediss_and_sentinel_lists(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], sentinel: bool
) -> None:
    """redis://, rediss:// and a ';'-list of sentinel:// URLs (with a master name) are accepted."""
    settings = make(monkeypatch, **env)
    assert settings.redis_url == env["REDIS_URL"]
    assert settings.uses_sentinel is sentinel


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": "sentinel://h:1;sentinel://h2:2"}, "GENQ_REDIS_SENTINEL_MASTER"),
        ({"REDIS_URL": "sentinel://h:1", "REDIS_SENTINEL_MASTER": ""}, "redis_sentinel_master"),
        ({"REDIS_URL": "http://h:1"}, "must start with redis://"),
        ({"REDIS_URL": "unix:///tmp/redis.sock"}, "must start with redis://"),
        ({"REDIS_URL": "redis://h:1;sentinel://h2:2"}, "only sentinel:// URLs"),
        (
            {"REDIS_URL": "sentinel://h:1;redis://h2:2", "REDIS_SENTINEL_MASTER": "m"},
            "only sentinel:// URLs",
        ),
        ({"REDIS_URL": "redis://h:port/0"}, "not a number"),
    ],
)
def test_redis_url_refuses_what_cannot_connect(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    """Sentinel without a master name, an unknown scheme, or ';' with non-sentinel URLs fail."""
    with pytest.raises(ValidationError, match=message):
        make(monkeypatch, **env)


def test_redis_passwords_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the master's password in GENQ_REDIS_URL nor the sentinels' shows in repr/str."""
    settings = make(
        monkeypatch,
        REDIS_URL="sentinel://:master-pw-1234@h:1",
        REDIS_SENTINEL_MASTER="mymaster",
        REDIS_SENTINEL_PASSWORD="sentinel-pw-5678",
    )
    shown = repr(settings) + str(settings)
    assert "master-pw-1234" not in shown
    assert "sentinel-pw-5678" not in shown


SECRETS_IN_REFUSED_SETTINGS = [
    pytest.param({"REDIS_URL": "http://:hunter2-pw@h:1/0"}, id="unknown-scheme"),
    pytest.param({"REDIS_URL": "redis://:hunter2-pw@h:1;sentinel://h2:2"}, id="mixed-list"),
    pytest.param({"REDIS_URL": "sentinel://:hunter2-pw@h:1"}, id="sentinel-without-master"),
    # A check across fields (a model validator) sees every input, the token included.
    pytest.param({"UPSTREAM_TOKEN": "hunter2-pw", "RETRY_BASE_S": "40"}, id="model-check"),
]


@pytest.mark.parametrize("env", SECRETS_IN_REFUSED_SETTINGS)
def test_validation_errors_never_show_the_refused_secret(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """Neither genq's message nor the printed ValidationError for refused settings contains
    the password (or token) they held."""
    with pytest.raises(ValidationError) as caught:
        make(monkeypatch, **env)
    assert all("hunter2-pw" not in error["msg"] for error in caught.value.errors())
    assert "hunter2-pw" not in str(caught.value)
    assert "hunter2-pw" not in repr(caught.value)
    # pydantic shortens a long input to its first characters: no echo of the input at all.
    assert "input_value" not in str(caught.value)


def test_a_visibility_timeout_shorter_than_the_longest_attempt_is_refused() -> None:
    """Start-up refuses a visibility timeout that the wait for a call slot, a slow upstream
    call and the record write could outlast (a second copy of the job would start while
    the first runs)."""
    with pytest.raises(ValueError, match="longest attempt"):
        Settings(
            upstream_timeout_s=50,
            task_soft_time_limit_s=55,
            task_time_limit_s=60,
            visibility_timeout_s=100,
        )
    assert Settings(upstream_timeout_s=30).longest_attempt_s == 60 + 3.05 + 60 + 5
    assert Settings(batch_slot_wait_s=1).longest_attempt_s == 1 + 3.05 + 60 + 5


def _failover(**target: str) -> str:
    return json.dumps([{"url": "https://router.example/v1", "protocol": "openai", **target}])


def test_failover_targets_read_their_token_from_the_variable_they_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failover target's token comes from its ``token_env`` variable, never shows in
    the settings' repr, and the target's circuit is listed after the primary's."""
    monkeypatch.setenv("FAILOVER_TOKEN", "hf_failover_secret")
    settings = make(
        monkeypatch, UPSTREAM_FAILOVER=_failover(model="org/m", token_env="FAILOVER_TOKEN")
    )
    token = settings.failover_token(0)
    assert token is not None and token.get_secret_value() == "hf_failover_secret"
    assert "hf_failover_secret" not in repr(settings)
    assert settings.target_circuits[1] == "openai~router.example.v1~org.m"
    assert settings.targets_per_job == 2


@pytest.mark.parametrize(
    ("failover", "message"),
    [
        (_failover(model="org/m", token_env="UNSET_TOKEN_VAR"), "UNSET_TOKEN_VAR is not set"),
        (_failover(model="org/m", token="hf_inline"), "Extra inputs are not permitted"),
        (_failover(model="../etc"), "model"),
        (_failover(model="org/m", protocol="grpc"), "protocol"),
        (
            json.dumps(
                [{"url": "http://127.0.0.1:8081", "protocol": "hf", "model": "simulator/echo-1"}]
            ),
            "repeats the primary",
        ),
    ],
)
def test_bad_failover_targets_fail_at_start_up_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, failover: str, message: str
) -> None:
    """A missing token variable, a token in the JSON, a bad model or protocol and the
    primary listed again each stop start-up with a message saying what; the token given
    inline is not echoed."""
    monkeypatch.delenv("UNSET_TOKEN_VAR", raising=False)
    with pytest.raises(ValidationError, match=message) as caught:
        make(monkeypatch, UPSTREAM_FAILOVER=failover)
    assert "hf_inline" not in str(caught.value)


def test_failover_that_is_not_json_fails_at_start_up_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GENQ_UPSTREAM_FAILOVER that is not JSON: pydantic-settings' error names the field."""
    with pytest.raises(SettingsError, match="upstream_failover"):
        make(monkeypatch, UPSTREAM_FAILOVER="[{")
