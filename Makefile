# The two entry points of the README: `make run` and `make test`. Both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test lint bench

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/voxgate serve

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/ruff format --check app tests bench
	$(VENV)/bin/mypy app bench

bench: setup
	$(PY) bench/bench_engine.py
