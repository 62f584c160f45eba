# `make run`: the embedded demo job. `make test`: lint, type check, whole test suite.
# Both create the virtual environment on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,plots]'
	touch $@

.PHONY: install run test lint
install: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/reldrop train

lint: $(VENV)/.installed
	$(BIN)/ruff check reldrop pipeline jobs tests
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest
