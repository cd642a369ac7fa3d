# genq: the two commands are `make run` and `make test`; see README.md.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run demo test test-unit lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## everything on this machine, serving until Ctrl-C
	$(PY) -m devstack run

demo: $(STAMP)  ## the same stack, a sample batch through the HTTP API, a summary, exit
	$(PY) -m devstack demo

test: $(STAMP) lint  ## lint, types, import contracts and every test (what .ci/run calls)
	$(PY) -m devstack ensure-redis
	$(VENV)/bin/pytest

test-unit: $(STAMP)  ## the fast lane: unit tests only (no Redis, no processes)
	$(VENV)/bin/pytest tests/unit

lint: $(STAMP)  ## ruff, mypy (strict) and the import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)  ## every benchmark; tables go to docs/benchmarks.md
	$(PY) -m devstack ensure-redis
	for b in bench/*_bench.py; do $(PY) -m bench.$$(basename $$b .py) || exit 1; done

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
