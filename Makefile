# The README's commands: `make serve`, `make test` (the whole check, what CI runs) and `make test-fast`.
# Each installs what it needs first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install serve test test-fast lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/cascade serve

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Everything: lint, then every test (unit, in-process Ray Serve, gateway processes, Prometheus, Locust).
test: lint
	$(BIN)/python -m pytest

# The edit loop: unit and in-process tests only (no Ray, no gateway process, no training), under 2 minutes.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"
