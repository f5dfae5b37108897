# Each target builds its own virtualenv on first use, so a fresh machine needs only Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: serve test lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

serve: $(BIN)/.installed
	$(BIN)/imgproxy serve --host 127.0.0.1 --port 8080

lint: $(BIN)/.installed
	$(BIN)/ruff check imgproxy tests bench scripts
	$(BIN)/ruff format --check imgproxy tests bench scripts
	$(BIN)/mypy imgproxy

test: lint
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/run.py
