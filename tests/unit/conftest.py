"""Unit tests see no GENQ_* variables: each reads the defaults (or what it sets itself),
whatever the integration suite's session set before them."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_genq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GENQ_")]:
        monkeypatch.delenv(name)
