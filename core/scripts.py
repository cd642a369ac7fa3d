"""Lua scripts shipped as package data, with genq's wire codes injected as Lua locals.

A script's numbers (circuit states, verdicts, transitions) are defined once, as Python
enums; :func:`constants` turns them into ``local NAME = value`` lines that are put in
front of the script's text, so no number is shared by comment between Python and Lua.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from enum import Enum
from importlib import resources

__all__ = ["constants", "load"]


def constants(*enums: Iterable[Enum], prefix: str = "") -> str:
    """``local PREFIX_NAME = value`` for every member of ``enums`` (ints bare, strings quoted)."""
    lines = []
    for enum in enums:
        for member in enum:
            value = member.value
            literal = str(value) if isinstance(value, int) else f"'{value}'"
            lines.append(f"local {prefix}{member.name} = {literal}")
    return "\n".join(lines) + "\n"


@functools.cache
def load(package: str, name: str, header: str = "") -> str:
    """The text of ``lua/<name>.lua`` in ``package``, after ``header`` (e.g. constants)."""
    return header + resources.files(package).joinpath("lua", f"{name}.lua").read_text()
