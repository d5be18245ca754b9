# The two commands of the README. Each one creates or refreshes .venv from pyproject.toml first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-brake clean

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

bench: $(STAMP)
	$(BIN)/python bench/drain.py

# 429s received by a drain of 5,000 jobs against a rate-limited sandbox, with and without the client-side cap.
bench-brake: $(STAMP)
	$(BIN)/python bench/brake.py

clean:
	rm -rf $(VENV) .connector .pytest_cache .mypy_cache .ruff_cache
