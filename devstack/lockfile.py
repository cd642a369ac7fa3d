"""Does the lock still say what ``pyproject.toml`` asks for? (``make lint`` asks.)

Two locks, both made by ``make lock`` (``uv pip compile --universal --generate-hashes``):
``requirements-dev.lock`` (the project, its ``dev`` extra and its ``build`` group: what
``make`` and CI install) and ``requirements.lock`` (the project and its ``build`` group
alone: what the image installs, at the same versions). The lock drifts from
``pyproject.toml`` when someone edits one and not the other. We catch it without asking
an index, from what uv writes beside each pin (``# via genq (pyproject.toml)``):

- every requirement of ``pyproject.toml`` is pinned, at a version its range allows;
- every pin that says it comes from ``pyproject.toml`` is still asked for there;
- every other pin is wanted by a package the lock holds (no orphans, no hand edits);
- the runtime lock is the dev lock's subset, at the same versions.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

__all__ = ["Pin", "check_locks", "drift", "parse_lock"]

DEV_LOCK = "requirements-dev.lock"
RUN_LOCK = "requirements.lock"
# How uv names the project itself in `# via` lines.
_PROJECT_SOURCE = re.compile(r"^(?P<project>[\w.-]+) \(pyproject\.toml(?::(?P<group>[\w-]+))?\)$")
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][\w.-]*)==(?P<version>[^\s;\\]+)")


@dataclass
class Pin:
    """One ``name==version`` of a lock, with the sources uv wrote beside it."""

    name: str
    version: Version
    via: list[str] = field(default_factory=list)


def parse_lock(text: str) -> dict[str, Pin]:
    """The pins of a ``uv pip compile`` output, by canonical name."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            current = Pin(canonicalize_name(match["name"]), Version(match["version"]))
            pins[current.name] = current
            in_via = False
            continue
        comment = line.strip()
        if current is None or not comment.startswith("#"):
            continue
        body = comment.lstrip("#").strip()
        if body == "via":
            in_via = True
        elif body.startswith("via "):
            current.via.append(body.removeprefix("via ").strip())
        elif in_via and body:
            current.via.append(body)
    return pins


def _wanted(pyproject: dict[str, Any], *, dev: bool) -> list[Requirement]:
    project = pyproject["project"]
    specs: list[str] = list(project.get("dependencies", []))
    specs += pyproject.get("dependency-groups", {}).get("build", [])
    if dev:
        specs += project.get("optional-dependencies", {}).get("dev", [])
    return [Requirement(spec) for spec in specs]


def _from_project(pin: Pin, project: str) -> bool:
    """Whether uv pinned this because ``pyproject.toml`` asked for it."""
    matches = (_PROJECT_SOURCE.match(via) for via in pin.via)
    return any(m is not None and canonicalize_name(m["project"]) == project for m in matches)


def drift(pyproject: dict[str, Any], pins: dict[str, Pin], *, dev: bool) -> list[str]:
    """What is wrong between ``pyproject.toml`` and one lock, one sentence each."""
    problems: list[str] = []
    wanted = {canonicalize_name(req.name): req for req in _wanted(pyproject, dev=dev)}
    project = canonicalize_name(pyproject["project"]["name"])
    for name, req in sorted(wanted.items()):
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{req} is in pyproject.toml but not in the lock")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"the lock pins {name}=={pin.version}, outside {req}")
        elif not _from_project(pin, project):
            problems.append(f"{req} is in pyproject.toml, but the lock was made without it")
    for pinned, pin in sorted(pins.items()):
        from_project = _from_project(pin, project)
        if from_project and pinned not in wanted:
            problems.append(f"the lock pins {pinned} for pyproject.toml, which no longer wants it")
        wanted_by = [canonicalize_name(via) for via in pin.via if not via.startswith("-")]
        if not from_project and not any(source in pins for source in wanted_by):
            problems.append(f"the lock pins {pinned}, which nothing in it needs")
    return problems


def check_locks(root: Path) -> list[str]:
    """Every drift between ``pyproject.toml`` and the two locks under ``root``."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    dev = parse_lock((root / DEV_LOCK).read_text())
    run = parse_lock((root / RUN_LOCK).read_text())
    problems = [f"{DEV_LOCK}: {p}" for p in drift(pyproject, dev, dev=True)]
    problems += [f"{RUN_LOCK}: {p}" for p in drift(pyproject, run, dev=False)]
    for name, pin in sorted(run.items()):
        if name not in dev or dev[name].version != pin.version:
            seen = dev[name].version if name in dev else "nothing"
            problems.append(f"{RUN_LOCK} pins {name}=={pin.version}, {DEV_LOCK} {seen}")
    return problems
