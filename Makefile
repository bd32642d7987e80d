# The two Quick-start commands: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit unit-fast system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dashkanban demo

# Debian packages the real-part tests use: mosquitto (broker), chromium (page screenshots),
# iproute2 (network namespaces), systemd (systemd-analyze verify). Installed only when missing
# and only when we are root; otherwise the tests that need them say why they skip.
system-deps:
	@bash scripts/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

# The suite under coverage, subprocesses included ([tool.coverage.*] in pyproject.toml): each
# process writes .coverage.<host>.<pid>.<random>, combined into .coverage; the report lists the
# files below 100 % and fails under the floor. COVERAGE_FILE is absolute because the tests start
# children in temporary directories. `make unit-fast` runs the suite without coverage.
COVERAGE := COVERAGE_FILE=$(CURDIR)/.coverage $(BIN)/python -m coverage

unit: $(STAMP)
	rm -f .coverage .coverage.*
	$(COVERAGE) run -m pytest
	$(COVERAGE) combine --quiet
	$(COVERAGE) report

unit-fast: $(STAMP)
	$(BIN)/python -m pytest

test: $(STAMP) system-deps lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build dist .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.* htmlcov
