# The two commands of the README. Each one creates or refreshes .venv from pyproject.toml first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

MUTATE_STAMP := $(VENV)/.installed-mutate

.PHONY: demo test lint soak mutate fuzz bench bench-brake bench-import bench-postgres bench-sqlite chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/connector demo

lint: $(STAMP)
	$(BIN)/ruff check connector jobs config tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q -n 2

# The suite 10 times in a row (RUNS=N for another count), each in a random order, with every core kept busy.
soak: $(STAMP)
	BIN=$(BIN) tests/soak.sh

$(MUTATE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,mutate]'
	touch $(MUTATE_STAMP)

# Mutation testing of the guarantees' core (tests/mutate.py says what and how); not part of `make test`: it is
# slow. Results are kept in mutants/, so a later run re-runs only the survivors and the functions that changed.
mutate: $(MUTATE_STAMP)
	$(BIN)/python tests/mutate.py

# The fuzz tier with thousands of cases per test instead of the few dozen of `make test`: before a release.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=release $(BIN)/pytest -q -p no:randomly tests/fuzz

# The connector beside a naive one-job-at-a-time script, on the same queue and sandboxes (bench/throughput.py):
# the table goes to bench/results/latest.md.
bench: $(STAMP)
	$(BIN)/python bench/throughput.py

# 429s received by a drain of 5,000 jobs against a rate-limited sandbox, with and without the client-side cap.
bench-brake: $(STAMP)
	$(BIN)/python bench/brake.py

# A million-row `jobs import`: its time and its peak memory (N=rows for another size).
bench-import: $(STAMP)
	$(BIN)/python bench/imports.py $(N)

# 2,000 mixed jobs through 30 % faults of every kind, on Spotler and on Mautic, with the default retry settings:
# drain time, jobs succeeded, and every score checked against the jobs.
bench-faults: $(STAMP)
	$(BIN)/python bench/faults.py

# Three runner processes on one PostgreSQL store, killed at random while they drain 5,000 jobs through the faulty
# Spotler sandbox (CHAOS_JOBS=N for another size); `make test` runs the same with 400. Needs PostgreSQL, as the
# PostgreSQL tier does (see tests/postgres.py).
chaos: $(STAMP)
	CHAOS_JOBS=$${CHAOS_JOBS:-5000} $(BIN)/pytest -q -s -p no:randomly tests/integration/test_postgres_chaos.py

# Several runner processes on one PostgreSQL store (a throw-away, durable server): jobs/s with 1, 2 and 3 runners,
# and claim+complete per second at the store alone.
bench-postgres: $(STAMP)
	$(BIN)/python bench/postgres_runners.py

# The SQLite store alone at the runner's call pattern on 8 threads (jobs/s, CPU and ms per call kind), and what a
# claim costs behind 5,000 due jobs blocked by a retry; ARGS="--compare copy_of_an_older_sqlite.py" measures both.
bench-sqlite: $(STAMP)
	$(BIN)/python bench/sqlite_store.py $(ARGS)

clean:
	rm -rf $(VENV) .connector .pytest_cache .mypy_cache .ruff_cache mutants
