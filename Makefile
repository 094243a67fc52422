# Everything a newcomer needs, from a machine that has only Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench lint typecheck unit integration monitoring compile clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# setuptools announces every editable install of a flat layout with a warning that asks
# for nothing; it is silenced, any other warning still shows.
QUIET := PYTHONWARNINGS="ignore:Editable installation"

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(QUIET) $(BIN)/pip install --quiet -e '.[compile]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(QUIET) $(BIN)/pip install --quiet -e '.[test,compile]'
	touch $@ $(VENV)/.installed

# The core compiled with mypyc into .compiled/ (models/compiled.py), again whenever a source it
# depends on changes; where no C compiler is at hand it says so and the core runs as Python.
CORE_SOURCES := $(wildcard models/*.py)
$(VENV)/.compiled: $(CORE_SOURCES) $(VENV)/.installed
	$(BIN)/python -m models.build
	touch $@

compile: $(VENV)/.compiled

# `make demo DEMO_ARGS=--prometheus` also runs a local Prometheus with the alerting rules.
demo: $(VENV)/.installed $(VENV)/.compiled
	$(BIN)/loyalty demo $(DEMO_ARGS)

# Throughput and latency figures (benchmarks/bench.py; the sinks' in benchmarks/sinks.py, the
# customers table's at scale in benchmarks/state_scale.py); writes bench/results/. Asserts nothing.
bench: $(VENV)/.installed $(VENV)/.compiled
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

unit: $(VENV)/.installed-test $(VENV)/.compiled
	$(BIN)/pytest tests/unit -q

integration: $(VENV)/.installed-test $(VENV)/.compiled
	$(BIN)/pytest tests/integration -q

# The alerting rules (promtool) and the dashboard and alerts against a real Prometheus
# (README, "Operations"); part of `make test` too.
monitoring: $(VENV)/.installed-test $(VENV)/.compiled
	$(BIN)/pytest tests/unit/test_alert_rules.py tests/integration/test_dashboard.py tests/integration/test_alerts.py -q

# Everything against the compiled core (where it could be compiled), then the unit tests
# again with the core as Python, as it runs where nothing could be compiled.
test: lint typecheck $(VENV)/.installed-test $(VENV)/.compiled
	$(BIN)/pytest -q
	LOYALTY_PURE_PYTHON=1 $(BIN)/pytest tests/unit -q

clean:
	rm -rf $(VENV) .compiled .loyalty-data .pytest_cache .mypy_cache .ruff_cache
