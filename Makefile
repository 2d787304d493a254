# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what is missing on first use (system packages as root, the .venv)
# and are quick no-ops after that.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kiln-installed

.PHONY: demo test lint unit lab-test host-packages venv clean

# System packages the lab and the tests use: every name in kiln/lab/host-packages.txt.
host-packages:
	@bash kiln/lab/ensure-host-packages kiln/lab/host-packages.txt

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[lab,test]'
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

unit: venv
	$(BIN)/pytest -n 2 --dist loadfile tests/unit

# Lab tests need root and the lab's packages; they start and stop their own lab.
lab-test: venv host-packages
	$(BIN)/pytest tests/lab

# Unit and integration tests need no lab (each makes its own stand-ins in a temporary
# directory) and run on two workers, a module's tests on one (they share its fixtures); the
# lab tests share one lab, one per machine, so they run in order in one process.
test: venv host-packages
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -n 2 --dist loadfile tests/unit tests/integration --durations=15
	$(BIN)/pytest tests/lab --durations=40

demo: venv host-packages
	@$(BIN)/kiln demo

clean:
	rm -rf $(VENV) build *.egg-info
