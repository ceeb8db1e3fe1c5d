# One entry point for every check. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STUDY ?= studies/digits-mlp-tpe.yaml
WORKERS ?= 2

.PHONY: setup run test lint postgres postgres-stop clean

$(BIN)/hpo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/hpo

setup: $(BIN)/hpo

run: setup
	$(BIN)/hpo run $(STUDY) --workers $(WORKERS)

lint: setup
	$(BIN)/ruff check hpo tests benchmarks

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) hpo.db hpo.db-* results
