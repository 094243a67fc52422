# Everything a newcomer needs, from a machine that has only Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench lint typecheck unit integration clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/loyalty demo

# Throughput and latency figures (benchmarks/bench.py); writes bench/results/. Asserts nothing.
bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

unit: $(VENV)/.installed-test
	$(BIN)/pytest tests/unit -q

integration: $(VENV)/.installed-test
	$(BIN)/pytest tests/integration -q

test: lint typecheck $(VENV)/.installed-test
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .loyalty-data .pytest_cache .mypy_cache .ruff_cache
