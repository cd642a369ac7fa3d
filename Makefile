# genq: the two commands are `make run` and `make test`; see README.md.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Every install comes from a lock: exact versions and hashes, made by `make lock`.
LOCK     := requirements-dev.lock
RUN_LOCK := requirements.lock
COMPILE  := $(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --upgrade --quiet --custom-compile-command 'make lock'

.PHONY: run demo test test-unit lint lock bench clean

# A new lock means a new venv: what is installed is exactly what the lock says.
$(STAMP): $(LOCK) pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
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

lint: $(STAMP)  ## the lock matches pyproject.toml; ruff, mypy (strict), the import contracts
	$(PY) -m devstack check-lock
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

lock: $(STAMP)  ## re-resolve both locks to the newest versions pyproject.toml allows
	$(COMPILE) --extra dev --group build -o $(LOCK)
	$(COMPILE) --group build --constraint $(LOCK) -o $(RUN_LOCK)
	$(PY) -m devstack check-lock

bench: $(STAMP)  ## every benchmark; tables go to docs/benchmarks.md
	$(PY) -m devstack ensure-redis
	for b in bench/*_bench.py; do $(PY) -m bench.$$(basename $$b .py) || exit 1; done

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
