# Set-up and the everyday commands. `make train` and `make test` create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install wheel train test test-all lint format docs clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install --no-cache-dir -e ".[dev]"  # no wheel cache: torch's are GBs
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with dev extras (editable)

wheel: $(STAMP)  ## build dist/osteolightning-*.whl, configs included (pip install it anywhere)
	rm -rf build  # setuptools reuses it: a file deleted since the last build would stay in
	$(BIN)/python -m pip wheel --no-deps --wheel-dir dist .

train: $(STAMP)  ## train EfficientNet-Lite0 on the built-in knee phantom (ARGS="key=value ...")
	$(BIN)/osteo-train $(ARGS)

test: $(STAMP)  ## the test suite CI runs (slow tests excluded)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-all: $(STAMP)  ## every test, slow ones included
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: $(STAMP)  ## build the documentation site, strict (a broken link fails), into site/
	$(BIN)/mkdocs build --strict --site-dir site

clean:  ## remove caches (not .venv, not logs)
	rm -rf .cache .pytest_cache .ruff_cache build
