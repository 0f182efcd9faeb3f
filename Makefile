# The two entry points of the README: `make run` and `make test`. Both set up first (scripts/setup.sh):
# `make run` only what serving needs, `make test` (and lint, bench) the test, lint and export tools too.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-serve run test lint bench client compose-smoke

setup-serve:
	@bash scripts/setup.sh serve

setup:
	@bash scripts/setup.sh test

run: setup-serve
	@echo "run: starting voxgate serve (default http://127.0.0.1:8000; ready when /readyz answers 200; Ctrl-C stops)" >&2
	$(VENV)/bin/voxgate serve

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check app tests bench scripts clients/python
	$(VENV)/bin/ruff format --check app tests bench scripts clients/python
	$(VENV)/bin/mypy app bench clients/python/voxgate_client
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) bench/bench_engine.py

# Regenerate the Python client (clients/python) from the service's OpenAPI document.
client: setup
	$(PY) scripts/python_client.py

# Builds the CPU image and runs the compose stack for real (Docker, or podman where no Docker engine
# answers), checks it as a client and removes it again: scripts/compose-smoke.sh. Needs root.
compose-smoke:
	@bash scripts/compose-smoke.sh
