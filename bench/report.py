"""Writes one benchmark's table into docs/benchmarks.md, between its own markers.

Each bench owns a section ``<!-- bench:NAME -->`` … ``<!-- /bench:NAME -->`` so benches
can be rerun one at a time without clobbering each other's figures.
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\nEvery figure here is written by a script in `bench/`; ratios compare "
    "genq with a baseline measured in the same run, on the same machine and redis-server.\n"
    "Rerun all with `make bench`, or one script with `python -m bench.<name>`.\n"
)


def machine() -> str:
    """One line naming where and when a run happened."""
    import os

    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section called ``name`` in docs/benchmarks.md."""
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    block = f"<!-- bench:{name} -->\n{markdown.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
    )
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else f"{text.rstrip()}\n\n{block}\n"
    )
    DOC.write_text(text)
