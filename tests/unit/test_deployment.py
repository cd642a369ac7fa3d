"""docker-compose.yml, the Procfile and the settings agree (Docker cannot run here)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from honcho.environ import parse_procfile

from core.settings import Settings

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


def test_worker_and_redis_are_wired_for_recovery() -> None:
    """Redis keeps an append-only file, services wait for healthy redis, workers restart."""
    services = compose()["services"]
    assert "--appendonly" in services["redis"]["command"]
    for name in ("worker", "api", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker"]["restart"] == "unless-stopped"
