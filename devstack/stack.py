"""The local process set: redis, the upstream simulator, a worker, the API and Flower.

The commands are the Procfile's; honcho runs them, prefixes their output and stops
them all on Ctrl-C or when one of them exits. This module only decides the
environment (ports, the dev API key, Flower's login, where the upstream is) and prints
the banner.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from honcho.environ import parse_procfile
from honcho.manager import Manager
from pydantic_settings import BaseSettings, SettingsConfigDict

from devstack.redis import ensure_redis_server, free_port

__all__ = ["DevSettings", "Stack", "plan_stack", "run_stack"]

ROOT = Path(__file__).resolve().parent.parent

#: Flower's user when devstack makes up its login (``FLOWER_BASIC_AUTH`` unset).
FLOWER_USER = "genq"


class DevSettings(BaseSettings):
    """Ports of the local stack (``GENQ_DEV_*``); a busy default port is replaced."""

    model_config = SettingsConfigDict(env_prefix="GENQ_DEV_", extra="ignore")

    redis_port: int = 6389
    simulator_port: int = 8081
    api_port: int = 8000
    flower_port: int = 5555
    upstream_url: str | None = None
    """Where the worker sends generations; unset means the local simulator."""


def _port_or_free(port: int) -> int:
    with socket.socket() as sock:
        # As servers bind: a port left in TIME_WAIT by the last run is free, a listener not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


@dataclass
class Stack:
    """What ``make run`` starts: the process commands and their shared environment."""

    processes: dict[str, str]
    env: dict[str, str]
    api_key: str
    """The key clients of this stack use: generated for this run, or the first given."""
    generated: bool = True
    urls: dict[str, str] = field(default_factory=dict)
    flower_auth: str = ""
    """Flower's ``user:password`` (``FLOWER_BASIC_AUTH``): generated, or the one given."""
    flower_generated: bool = True


def plan_stack(say: object = print) -> Stack:
    """Choose ports, find redis-server and build the environment of every process."""
    dev = DevSettings()
    ports = {
        name: _port_or_free(getattr(dev, f"{name}_port"))
        for name in ("redis", "simulator", "api", "flower")
    }
    given = os.environ.get("GENQ_API_KEYS")
    api_key = secrets.token_urlsafe(24)  # used, and shown, only when no keys are given
    key = given.split(",")[0].strip() if given else api_key
    # Flower can revoke tasks and shut workers down: never served without a login. Flower
    # reads FLOWER_BASIC_AUTH itself, so the Procfile's command stays as it is.
    given_flower = os.environ.get("FLOWER_BASIC_AUTH")
    flower_auth = given_flower or f"{FLOWER_USER}:{secrets.token_urlsafe(18)}"
    upstream = dev.upstream_url or os.environ.get("GENQ_UPSTREAM_URL")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "GENQ_DEV_REDIS_SERVER": ensure_redis_server(say),
        "GENQ_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "GENQ_UPSTREAM_URL": upstream or f"http://127.0.0.1:{ports['simulator']}",
        "GENQ_API_KEYS": given or api_key,
        # The stack's key (generated, or the first given: stable across runs) may also
        # steer circuits, as `genq circuits open` needs; GENQ_ADMIN_API_KEYS, when given,
        # says otherwise. The banner says which.
        "GENQ_ADMIN_API_KEYS": os.environ.get("GENQ_ADMIN_API_KEYS") or key,
        "FLOWER_BASIC_AUTH": flower_auth,
        **{f"GENQ_DEV_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    processes = dict(parse_procfile((ROOT / "Procfile").read_text()).processes)
    if upstream:
        del processes["simulator"]
    urls = {
        "api": f"http://127.0.0.1:{ports['api']}",
        "docs": f"http://127.0.0.1:{ports['api']}/docs",
        "flower": f"http://127.0.0.1:{ports['flower']}",
        "upstream": env["GENQ_UPSTREAM_URL"] + ("" if upstream else "  (the simulator)"),
    }
    return Stack(
        processes=processes,
        env=env,
        api_key=key,
        generated=not given,
        urls=urls,
        flower_auth=flower_auth,
        flower_generated=not given_flower,
    )


def wait_ready(api_url: str, timeout_s: float = 60.0) -> bool:
    """Wait until the API answers ``/readyz`` (Redis up) or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{api_url}/readyz", timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def _login(stack: Stack) -> str:
    """Flower's login for the banner: a generated one is printed, a given one never is."""
    if stack.flower_generated:
        return f"   login {stack.flower_auth}  (dev only, generated for this run)"
    return "   login (FLOWER_BASIC_AUTH)"


def _key_line(stack: Stack) -> str:
    """The banner's word on the API key: a generated one is printed, a given one never."""
    admin = stack.api_key in stack.env.get("GENQ_ADMIN_API_KEYS", "").split(",")
    role = "an admin key too" if admin else "not an admin key (GENQ_ADMIN_API_KEYS)"
    if stack.generated:
        return f"  api key  {stack.api_key}   (dev only, generated for this run; {role})"
    return f"  api key  the first of GENQ_API_KEYS, not shown   ({role})"


def _exports(stack: Stack) -> str:
    """The line that points the ``genq`` CLI (GENQ_API_URL, GENQ_API_KEY) at this stack.
    A given key is not printed: the line takes it from the user's own GENQ_API_KEYS."""
    key = shlex.quote(stack.api_key) if stack.generated else '"${GENQ_API_KEYS%%,*}"'
    return f"  export GENQ_API_URL={shlex.quote(stack.urls['api'])} GENQ_API_KEY={key}"


def _genq_command() -> str:
    """How to run this venv's ``genq`` from the repository, where ``make run`` runs."""
    script = Path(sys.executable).parent / "genq"
    return str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script)


def _banner(stack: Stack) -> str:
    api = stack.urls["api"]
    lines = ["", "genq is up (Ctrl-C stops everything):"]
    lines += [
        f"  {name:<9}{url}{_login(stack) if name == 'flower' else ''}"
        for name, url in stack.urls.items()
    ]
    flower_login = stack.flower_auth if stack.flower_generated else "<user>:<password>"
    auth = '-H "Authorization: Bearer $GENQ_API_KEY"'
    lines += [
        _key_line(stack),
        "",
        "In another terminal, point the genq command and the curls below at it"
        + (":" if stack.generated else " (your GENQ_API_KEYS exported there):"),
        _exports(stack),
        "",
        "Try it:",
        f"  {_genq_command()} submit 'Say hello to genq' --wait",
        f"  curl -s -X POST {api}/v1/jobs {auth} \\",
        "       -H 'Content-Type: application/json' -d '{\"prompt\": \"Say hello to genq\"}'",
        f"  curl -s {api}/v1/jobs/<id> {auth}",
        f"  curl -s -u '{flower_login}' {stack.urls['flower']}/api/queues/length",
        "",
    ]
    return "\n".join(lines)


def run_stack(stack: Stack, banner: bool = True) -> int:
    """Run every process until Ctrl-C (or one exits); returns honcho's exit code."""
    manager = Manager()
    for name, cmd in stack.processes.items():
        manager.add_process(name, cmd, env=stack.env, cwd=str(ROOT))
    if banner:

        def announce() -> None:
            if wait_ready(stack.urls["api"]):
                print(_banner(stack), flush=True)

        threading.Thread(target=announce, daemon=True).start()
    manager.loop()
    return int(manager.returncode or 0)
