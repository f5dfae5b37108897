# Each target builds its own virtualenv on first use, so a fresh machine needs only Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: serve test lint bench peers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The service alone, for `make serve`.
$(BIN)/.installed-serve: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Everything the tests and benchmarks use (optional extras included, so they are tested).
$(BIN)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@ $(BIN)/.installed-serve

serve: $(BIN)/.installed-serve
	$(BIN)/imgproxy serve --host 127.0.0.1 --port 8080

lint: $(BIN)/.installed-test
	$(BIN)/ruff check imgproxy tests bench scripts
	$(BIN)/ruff format --check imgproxy tests bench scripts
	$(BIN)/mypy imgproxy

test: lint
	$(BIN)/python -m pytest

# Project vs a naive FastAPI + Pillow server (issue figures: cold, hot, RSS), about 6 minutes.
bench: $(BIN)/.installed-test
	$(BIN)/python bench/run.py

# Project vs thumbor, pyvips, pilbox, bare Starlette through ../shared/bench (about an hour).
peers: $(BIN)/.installed-test
	bash ../shared/bench/setup_peers.sh
	$(BIN)/python bench/peers.py
