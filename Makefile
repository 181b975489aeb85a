# The two commands of the README: `make demo` runs the main job, `make test` passes the tests.
# Both set everything up first: the virtual environment, the packages, and (through the ledger
# command and the test session) the Kafka broker and PostgreSQL.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint unit integration fault fault-repeat bench stop clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (found %d.%d): install python3.11" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/ledger demo

# Lint, then every test but the benchmarks and the long fault scenarios (`make fault`); the
# test session brings the stack up.
test: setup lint
	$(BIN)/python -m pytest -m "not fault" --cov --cov-report=term-missing:skip-covered

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: setup
	$(BIN)/python -m pytest tests/unit

integration: setup
	$(BIN)/python -m pytest tests/integration

fault: setup
	$(BIN)/python -m pytest -m "fault or fault_subset" -s tests/fault

# One scenario N times in a row, a fresh seed each, stopping at the first failure:
# `make fault-repeat SCENARIO=pause N=20`.
SCENARIO ?= pause
N ?= 20
fault-repeat: setup
	$(BIN)/python -m tests.fault.repeat $(SCENARIO) $(N)

bench: setup
	@mkdir -p bench-results
	$(BIN)/ledger bench --json bench-results/bench.json

stop:
	$(BIN)/ledger stack down

clean: stop
	$(BIN)/ledger stack down --purge
	rm -rf $(VENV)
