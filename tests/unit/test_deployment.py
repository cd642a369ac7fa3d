"""docker-compose.yml, the Procfile, devstack and the settings agree (Docker cannot run here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from honcho.environ import parse_procfile

import devstack.stack
from core.settings import Settings
from devstack.stack import _banner, plan_stack

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def procfile() -> dict[str, str]:
    return dict(parse_procfile((ROOT / "Procfile").read_text()).processes)


def test_compose_and_procfile_run_the_same_processes() -> None:
    """Every Procfile process is a compose service and the other way round."""
    assert set(procfile()) == set(compose()["services"])


@pytest.mark.parametrize("name", ["simulator", "worker", "api", "flower"])
def test_compose_commands_match_the_procfile(name: str) -> None:
    """A service runs the same program with the same leading arguments as `make run`."""
    proc_args = shlex.split(procfile()[name])
    compose_args = compose()["services"][name]["command"]
    # Host, port and log options differ between the two; the program and its target do not.
    lead = 5 if name == "worker" else 3
    assert compose_args[:lead] == proc_args[:lead]


def test_compose_env_names_are_settings() -> None:
    """Every GENQ_* variable compose sets is a field of Settings."""
    env = compose()["x-genq-env"]
    fields = {f"GENQ_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields


def test_compose_is_production_shaped() -> None:
    """Redis keeps an AOF, needs a password and never evicts; every service restarts and
    has a healthcheck; services wait for a healthy Redis, which genq reaches with the
    password."""
    services = compose()["services"]
    redis_command = " ".join(services["redis"]["command"])
    for flag in (
        "--appendonly yes",
        "--appendfsync everysec",
        "--maxmemory-policy noeviction",
        "--requirepass",
    ):
        assert flag in redis_command
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
    for name in ("worker", "api", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert compose()["x-genq-env"]["GENQ_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def test_env_example_names_every_variable_compose_needs_and_nothing_else() -> None:
    """Every ${VAR} of docker-compose.yml is in .env.example, and every name there is read
    by compose or is a genq setting."""
    used = set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "docker-compose.yml").read_text()))
    example = set(env_example())
    assert used <= example, used - example
    settings = {f"GENQ_{name.upper()}" for name in Settings.model_fields}
    assert example <= used | settings, example - used - settings


def test_env_example_leaves_every_secret_to_fill_in() -> None:
    """No secret has a value in the example."""
    example = env_example()
    for name in (
        "REDIS_PASSWORD",
        "GENQ_API_KEYS",
        "GENQ_ADMIN_API_KEYS",
        "FLOWER_BASIC_AUTH",
        "GENQ_UPSTREAM_TOKEN",
    ):
        assert example[name] == "", name


def test_compose_flower_requires_a_login() -> None:
    """Compose refuses to start Flower unless FLOWER_BASIC_AUTH is set, and keeps genq's env."""
    env = compose()["services"]["flower"]["environment"]
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", env["FLOWER_BASIC_AUTH"])
    assert compose()["x-genq-env"].items() <= env.items()
    # Flower reads the login from its environment, never from a command-line argument.
    assert "auth" not in " ".join(compose()["services"]["flower"]["command"])
    assert "auth" not in procfile()["flower"]


@pytest.fixture
def no_redis_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """plan_stack without looking for (or installing) a redis-server."""
    monkeypatch.setattr(devstack.stack, "ensure_redis_server", lambda say: "/bin/redis-server")
    for name in ("FLOWER_BASIC_AUTH", "GENQ_API_KEYS", "GENQ_ADMIN_API_KEYS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_redis_lookup")
def test_devstack_generates_a_flower_login_when_none_is_given() -> None:
    """Without FLOWER_BASIC_AUTH, each run gets a fresh genq:<random> login, shown in the banner."""
    first, second = plan_stack(say=lambda _: None), plan_stack(say=lambda _: None)
    user, _, password = first.env["FLOWER_BASIC_AUTH"].partition(":")
    assert user == "genq"
    assert len(password) >= 20
    assert first.flower_generated
    assert first.flower_auth == first.env["FLOWER_BASIC_AUTH"]
    assert second.env["FLOWER_BASIC_AUTH"] != first.env["FLOWER_BASIC_AUTH"]
    banner = _banner(first)
    flower_line = next(line for line in banner.splitlines() if line.strip().startswith("flower"))
    assert first.urls["flower"] in flower_line
    assert f"genq:{password}" in flower_line


@pytest.mark.usefixtures("no_redis_lookup")
def test_devstack_passes_a_given_flower_login_through_unprinted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A FLOWER_BASIC_AUTH from the environment reaches the processes and never the banner."""
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:s3cret-flower-pw,other:second-pw")
    stack = plan_stack(say=lambda _: None)
    assert stack.env["FLOWER_BASIC_AUTH"] == "ops:s3cret-flower-pw,other:second-pw"
    assert not stack.flower_generated
    banner = _banner(stack)
    assert "s3cret-flower-pw" not in banner
    assert "second-pw" not in banner
    flower_line = next(line for line in banner.splitlines() if line.strip().startswith("flower"))
    assert "(FLOWER_BASIC_AUTH)" in flower_line
