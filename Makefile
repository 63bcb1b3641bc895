# keytrail — `make run` starts everything on embedded defaults; `make test` installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test check format bench services

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e . --group dev
	@touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/keytrail up

# The tests need a real Redis; start a private one when none answers on 127.0.0.1:6379.
services:
	@scripts/ensure-redis

test: install services
	$(BIN)/pytest

check: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install services
	$(BIN)/python bench/receiver.py
	$(BIN)/python bench/worker.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/audit_store.py --records 200000
