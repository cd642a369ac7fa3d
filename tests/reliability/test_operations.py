"""What an operator sees through an outage, with the tools operators use: a real
Prometheus (Debian's ``prometheus``) evaluating ``deploy/prometheus``'s rules against
genq's ``/metrics``, and a real headless Chromium (Debian's ``chromium``) reading the
status page. A worker, the API and a simulator run on a redis-server of their own."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from core.circuits import circuit_name
from devstack.redis import RedisProcess, ensure_redis_server, free_port
from simulator.server import SimulatorServer
from tests.integration.conftest import ADMIN_KEY, auth, genq_env, wait_http
from tests.integration.redis_support import genq_processes, stop

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "genq-rules.yml"
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DOC = {"id": "d1", "text": "Answers go on while the provider is down."}
ALERT = "GenqCircuitOpen"
ALERT_FOR = "3s"
"""The circuit alert's ``for`` in this test (the shipped rule says 5m; its expression is
the shipped one, unchanged)."""


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install {name} (.ci/run does)")
    return found


@dataclass
class Outage:
    api: str
    sim: SimulatorServer
    circuit: str

    def submit(self, prompt: str) -> None:
        body = {"prompt": prompt, "context": [DOC]}
        response = requests.post(f"{self.api}/v1/jobs", json=body, headers=auth(), timeout=5)
        assert response.status_code == 202, response.text

    def state(self) -> str:
        listed = requests.get(f"{self.api}/v1/circuits", headers=auth(), timeout=5).json()
        return str(next(c for c in listed if c["name"] == self.circuit)["state"])

    def until(self, state: str, mode: str, timeout_s: float = 30) -> None:
        """Simulator in ``mode``; jobs until the circuit is in ``state``."""
        self.sim.configure(mode=mode)
        deadline = time.monotonic() + timeout_s
        n = 0
        while self.state() != state:
            assert time.monotonic() < deadline, f"circuit not {state} in {timeout_s} s"
            self.submit(f"{mode} {n}")
            n += 1
            time.sleep(0.3)


@pytest.fixture(scope="module")
def outage() -> Iterator[Outage]:
    own = RedisProcess(ensure_redis_server(say=lambda _: None))
    own.start()
    try:
        with SimulatorServer() as sim:
            env = genq_env(
                own.url,
                sim.url,
                GENQ_BREAKER_FAIL_MAX="2",
                GENQ_BREAKER_RESET_TIMEOUT_S="1",
                GENQ_BREAKER_MAX_RESET_TIMEOUT_S="1",
                GENQ_MAX_RETRIES="0",
                GENQ_UPSTREAM_CONNECT_TIMEOUT_S="0.5",
            )
            with genq_processes(env, "operations") as procs:
                yield Outage(procs.api_url, sim, circuit_name("hf", sim.url, "simulator/echo-1"))
    finally:
        own.stop()


def test_the_shipped_prometheus_files_pass_promtool() -> None:
    promtool = _tool("promtool")
    for args in (["check", "rules", str(RULES)], ["check", "config", str(CONFIG)]):
        checked = subprocess.run([promtool, *args], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def prometheus(outage: Outage, tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping the API every second, with the shipped rules (the circuit
    alert's ``for`` shortened to ``ALERT_FOR``)."""
    binary = _tool("prometheus")
    rules = yaml.safe_load(RULES.read_text())
    for rule in rules["groups"][0]["rules"]:
        if rule.get("alert") == ALERT:
            rule["for"] = ALERT_FOR
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": "genq-api",
                "static_configs": [{"targets": [outage.api.removeprefix("http://")]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    args = [binary, f"--config.file={tmp_path / 'prometheus.yml'}"]
    args += [f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"]
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready", timeout_s=30)
        yield url
    finally:
        stop(proc)
        log.close()


def _alert_states(prometheus: str) -> set[str]:
    alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return {a["state"] for a in alerts if a["labels"].get("alertname") == ALERT}


def _watch(prometheus: str, want: set[str], timeout_s: float) -> list[set[str]]:
    """The alert's states, polled until they are ``want`` (fails after ``timeout_s``)."""
    seen: list[set[str]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = _alert_states(prometheus)
        if not seen or states != seen[-1]:
            seen.append(states)
        if states == want:
            return seen
        time.sleep(0.25)
    raise AssertionError(f"{ALERT} never {want or 'cleared'}: {seen}")


def test_the_circuit_alert_goes_pending_fires_and_clears(outage: Outage, prometheus: str) -> None:
    """A real outage: the alert is pending, then firing while the circuit stays open, and
    gone once the provider is back and the circuit closed."""
    assert _watch(prometheus, set(), 10) == [set()]  # up, and quiet while all is well
    outage.until("open", mode="down")
    seen = _watch(prometheus, {"pending"}, 20)
    seen += _watch(prometheus, {"firing"}, 20)
    assert outage.state() != "closed"
    outage.until("closed", mode="ok")
    seen += _watch(prometheus, set(), 30)
    assert {"pending"} in seen and {"firing"} in seen, seen


def _rendered(url: str) -> str:
    """The page's DOM after Chromium loaded and ran it."""
    chromium = _tool("chromium")
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_status_page_shows_the_open_circuit_in_chromium(outage: Outage) -> None:
    """Chromium, given the admin key as basic auth, renders the page with the circuit
    open; without a key the page is refused."""
    refused = requests.get(f"{outage.api}/status", timeout=5)
    assert refused.status_code == 401 and "Basic" in refused.headers["WWW-Authenticate"]
    outage.until("open", mode="down")
    try:
        deadline, dom = time.monotonic() + 20, ""
        host = outage.api.removeprefix("http://")
        row = re.compile(rf'data-circuit="{re.escape(outage.circuit)}" data-state="(\S+?)"')
        states: list[Any] = []
        while time.monotonic() < deadline:
            dom = _rendered(f"http://admin:{ADMIN_KEY}@{host}/status")
            states = row.findall(dom)
            if states and states[0] != "closed":
                break
            time.sleep(1)
        assert states and states[0] in ("open", "half-open"), dom[-3000:]
        assert "<h1>genq status</h1>" in dom and 'id="recent"' in dom
        assert ADMIN_KEY not in dom
    finally:
        outage.until("closed", mode="ok")
