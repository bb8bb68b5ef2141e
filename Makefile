# The two commands of the README: `make run` (set up and serve the demo) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
export FLASK_APP := web

.PHONY: run setup test lint serve clean native bench-matching

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed
	$(BIN)/flask db upgrade
	$(BIN)/flask registry sync-factors
	$(BIN)/flask demo seed

run: setup
	$(BIN)/flask run --host 127.0.0.1 --port 5000

serve:
	$(BIN)/flask run --host 127.0.0.1 --port 5000

# The compiled (mypyc) builds of matching/engine.py and registry/behaviour_fast.py; the tests run
# against them and the pure source.
native: $(VENV)/.installed
	$(BIN)/python -m matching.build
	$(BIN)/python -m registry.build

test: native
	$(BIN)/pytest -q

bench-matching: native
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/matching_bench.py

lint: $(VENV)/.installed
	$(BIN)/ruff check matching registry exchange web tests bench
	$(BIN)/mypy matching registry

clean:
	rm -rf $(VENV) instance .pytest_cache .hypothesis
