"""``make demo``: the stack, a batch through the ``genq`` CLI, an outage in the middle.

The stack runs as a child process (``python -m devstack run``), stopped with SIGINT as
Ctrl-C would, whatever happens. The demo then drives genq as a user would, with the
``genq`` command (a subprocess whose progress bar and tables are what is shown):

1. warm-up: 30 common prompts while the upstream simulator is healthy, so the result
   cache holds their answers;
2. main batch: 60 prompts, the simulator answering in 300 ms; when a third of them are
   done the simulator switches to ``{"mode": "outage"}``: the circuit opens, and the rest
   are answered at once from the cache (the 30 prompts repeated from the warm-up) and
   from excerpts of their documents (30 questions that carry ``context``). Every prompt
   of the sample has one or the other, so none can fail even while the upstream is down;
3. recovery: a few seconds later the simulator answers again; once the open window
   (``GENQ_BREAKER_RESET_TIMEOUT_S=3`` in the demo stack) has passed, one job is the
   circuit's probe: it succeeds and the circuit closes;
4. after: 10 new prompts, every one answered by the upstream again.

It ends with a summary (answers by source, the circuit's transitions) and exits 0 when
every request got an answer, some from the cache and some from excerpts, and the
circuit opened and closed again.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.table import Table

from devstack.demo_sample import after_lines, main_lines, warmup_lines
from devstack.stack import ROOT, plan_stack, wait_ready

__all__ = ["DEMO_STACK_ENV", "run_demo"]

#: The demo stack's breaker and worker: a short open window so recovery shows within the
#: demo, one quick retry, and few worker threads so the batch takes a few seconds.
DEMO_STACK_ENV = {
    "GENQ_BREAKER_RESET_TIMEOUT_S": "3",
    "GENQ_BREAKER_FAIL_MAX": "5",
    "GENQ_MAX_RETRIES": "1",
    "GENQ_RETRY_BASE_S": "0.5",
    "GENQ_WORKER_CONCURRENCY": "4",
}
MAIN_LATENCY_MS = 300
OUTAGE_AFTER = 1 / 3  # of the main batch done
OUTAGE_MIN_S = 4.0


def tally(path: Path) -> Counter[str]:
    """Answers by source in a results file, and ``failed`` for its error lines."""
    counts: Counter[str] = Counter()
    if not path.exists():
        return counts
    for raw in path.read_text().splitlines():
        line = json.loads(raw)
        if line.get("error"):
            counts["failed"] += 1
        else:
            counts[line["response"]["body"]["genq"]["source"]] += 1
    return counts


class Driver:
    """The demo's client side: the genq CLI, the API and the simulator's fault switch."""

    def __init__(self, console: Console, api: str, key: str, sim: str, timeout_s: float):
        self.console, self.api, self.sim, self.timeout_s = console, api, sim, timeout_s
        self.headers = {"Authorization": f"Bearer {key}"}
        self.dir = ROOT / ".run" / "demo"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "GENQ_API_URL": api, "GENQ_API_KEY": key}
        if not sys.stdout.isatty():
            self.env["COLUMNS"] = "110"
        script = Path(sys.executable).parent / "genq"
        self.genq = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]

    def cli(self, *args: str) -> int:
        """Run ``genq ARGS`` with this stack's URL and key in its environment."""
        self.console.print(f"$ genq {shlex.join(args)}", style="bold", markup=False)
        sys.stdout.flush()
        try:
            done = subprocess.run(
                [*self.genq, *args], env=self.env, cwd=ROOT, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            self.console.print(f"[red]genq did not finish in {self.timeout_s:g} s[/red]")
            return 1
        return done.returncode

    def batch(self, name: str, lines: list[dict[str, Any]]) -> tuple[int, Counter[str]]:
        source, results = self.dir / f"{name}.jsonl", self.dir / f"{name}.results.jsonl"
        source.write_text("".join(json.dumps(line) + "\n" for line in lines))
        results.unlink(missing_ok=True)
        where = [str(p.relative_to(ROOT)) for p in (source, results)]
        code = self.cli("batch", "run", where[0], "-o", where[1])
        return code, tally(results)

    def simulate(self, **config: Any) -> None:
        requests.post(f"{self.sim}/_sim/config", json=config, timeout=5).raise_for_status()

    def circuits(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = requests.get(
            f"{self.api}/v1/circuits", headers=self.headers, timeout=5
        ).json()
        return found

    def newest_batch(self) -> dict[str, Any] | None:
        resp = requests.get(f"{self.api}/v1/batches?limit=1", headers=self.headers, timeout=5)
        data: list[dict[str, Any]] = resp.json()["data"]
        return data[0] if data else None

    def wait_probe_due(self) -> None:
        """Until no circuit is open with time left before its probe."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(c["retry_after"] == 0 for c in self.circuits() if c["state"] == "open"):
                return
            time.sleep(0.2)


class OutageSwitch(threading.Thread):
    """Switches the simulator to an outage once OUTAGE_AFTER of a new batch is done."""

    def __init__(self, driver: Driver, known: str | None) -> None:
        super().__init__(daemon=True)
        self.driver, self.known = driver, known
        self.at: float | None = None
        self.done_when = ""
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            batch = self.driver.newest_batch()
            if batch is not None and batch["id"] != self.known:
                counts = batch["request_counts"]
                done = counts["completed"] + counts["failed"]
                if counts["total"] and done >= counts["total"] * OUTAGE_AFTER:
                    self.driver.simulate(mode="outage")
                    self.at = time.monotonic()
                    self.done_when = f"{done}/{counts['total']}"
                    return


Moves = list[tuple[str, dict[str, int], str]]


def _transitions(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> Moves:
    """Each circuit that changed: its name, its transitions during the demo, its state."""
    start = {c["name"]: c["transitions"] for c in before}
    moves = []
    for circuit in after:
        old = start.get(circuit["name"], {})
        delta = {k: v - old.get(k, 0) for k, v in circuit["transitions"].items()}
        delta = {k: v for k, v in delta.items() if v > 0}
        if delta:
            moves.append((circuit["name"], delta, circuit["state"]))
    return moves


def _phase_table(phases: dict[str, Counter[str]]) -> Table:
    table = Table(title="genq demo: answers by source")
    for column in ("phase", "upstream", "cache", "excerpt", "failed"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for name, counts in phases.items():
        table.add_row(name, *(str(counts[k]) for k in ("upstream", "cache", "excerpt", "failed")))
    return table


def _story(driver: Driver, console: Console) -> tuple[dict[str, Counter[str]], list[int]]:
    """The four steps; answers by source per phase, and the CLI's exit codes."""
    codes, phases = [], {}
    console.rule("1. warm-up: 30 common prompts, upstream healthy (fills the cache)")
    driver.simulate(mode="ok", latency_ms=0)
    code, phases["warm-up"] = driver.batch("warmup", warmup_lines())
    codes.append(code)
    console.rule(f"2. main batch: 60 prompts at {MAIN_LATENCY_MS} ms; outage after a third")
    newest = driver.newest_batch()
    switch = OutageSwitch(driver, newest["id"] if newest else None)
    driver.simulate(latency_ms=MAIN_LATENCY_MS)
    switch.start()
    code, phases["main (outage)"] = driver.batch("main", main_lines())
    codes.append(code)
    switch.stop.set()
    switch.join(timeout=5)
    if switch.at is None:
        console.print("[red]the batch ended before the outage could start[/red]")
        return phases, [*codes, 1]
    console.print(f"the simulator went down when {switch.done_when} were done")
    codes.append(driver.cli("circuits"))
    console.rule("3. recovery: the upstream answers again; one probe closes the circuit")
    time.sleep(max(0.0, switch.at + OUTAGE_MIN_S - time.monotonic()))
    driver.simulate(mode="ok", latency_ms=150)
    console.print("simulator: {mode: ok}; waiting for the circuit's probe to be due")
    driver.wait_probe_due()
    codes.append(driver.cli("submit", "Is the upstream back?", "--wait"))
    codes.append(driver.cli("circuits"))
    console.rule("4. after: 10 new prompts, all from the upstream")
    code, phases["after"] = driver.batch("after", after_lines())
    codes.append(code)
    return phases, codes


def _verdict(console: Console, phases: dict[str, Counter[str]], moves: Moves) -> bool:
    """Print the totals and the circuits' story; whether the demo showed what it should."""
    total: Counter[str] = sum(phases.values(), Counter())
    answered = total["upstream"] + total["cache"] + total["excerpt"]
    console.print(
        f"answers: upstream {total['upstream']} · cache {total['cache']} · "
        f"excerpt {total['excerpt']} · failed {total['failed']}"
    )
    for name, delta, state in moves:
        steps = " · ".join(f"{k} {v}" for k, v in delta.items())
        console.print(f"circuit {name}: {steps} · now {state}", markup=False)
    recovered = any(d.get("opened") and d.get("closed") and s == "closed" for _, d, s in moves)
    ok = total["failed"] == 0 and total["cache"] > 0 and total["excerpt"] > 0 and recovered
    if ok:
        console.print(f"every request got an answer ({answered}/{answered + total['failed']})")
    else:
        console.print("[red]the demo did not go as planned (see above)[/red]")
    return ok


def _drive(console: Console, driver: Driver, log_path: Path) -> int:
    console.print(f"starting the stack (log: {log_path.relative_to(ROOT)}) ...")
    if not wait_ready(driver.api, timeout_s=60):
        console.print("[red]the API did not become ready; last lines of the log:[/red]")
        console.print(log_path.read_text()[-3000:], markup=False)
        return 1
    started = time.monotonic()
    before = driver.circuits()
    phases, codes = _story(driver, console)
    console.rule(f"summary ({time.monotonic() - started:.1f} s)")
    console.print(_phase_table(phases))
    ok = _verdict(console, phases, _transitions(before, driver.circuits()))
    ok = ok and all(code == 0 for code in codes)
    return 0 if ok else 1


def run_demo(timeout_s: float = 90.0) -> int:
    """Run the demo; 0 when every request got an answer and the circuit recovered."""
    console = Console(width=None if sys.stdout.isatty() else 110)
    for name in ("GENQ_UPSTREAM_URL", "GENQ_DEV_UPSTREAM_URL"):
        # The outage is the simulator's: a real upstream cannot be switched off on cue.
        if os.environ.pop(name, None):
            console.print(f"{name} is ignored: the demo runs against the upstream simulator")
    stack = plan_stack(console.print)
    log_path = ROOT / ".run" / "demo-stack.log"
    log_path.parent.mkdir(exist_ok=True)
    # The child plans the same stack: same ports, same key, same upstream choice.
    env = {**os.environ, "GENQ_API_KEYS": stack.env["GENQ_API_KEYS"], **DEMO_STACK_ENV}
    env.update({k: v for k, v in stack.env.items() if k.startswith("GENQ_DEV_")})
    with log_path.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "devstack", "run", "--no-banner"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sim = f"http://127.0.0.1:{stack.env['GENQ_DEV_SIMULATOR_PORT']}"
    driver = Driver(console, stack.urls["api"], stack.api_key, sim, timeout_s)
    try:
        return _drive(console, driver, log_path)
    finally:
        _stop(child)


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGINT)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
