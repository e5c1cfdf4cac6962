# The two commands a newcomer runs: `make demo` and `make test`.
# Each creates or refreshes .venv (uv, cached in ~/.cache/uv) and is a no-op install when
# pyproject.toml has not changed since the last run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
PYTEST_ARGS ?=

.PHONY: demo test venv-demo venv-test infra lint bench clean

demo: venv-demo
	$(BIN)/flts demo

test: venv-test infra
	$(BIN)/python -m pytest $(PYTEST_ARGS)

venv-demo: $(VENV)/.installed-demo
venv-test: $(VENV)/.installed-test

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed-demo: pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -e '.[all]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -e '.[dev]'
	touch $@ $(VENV)/.installed-demo

# Benchmarks print figures (not tests): serving throughput/latency/cold start, accuracy, stack.
bench: venv-test infra
	$(BIN)/flts bench

lint: venv-test
	$(BIN)/ruff check flts functions eventing tests benchmarks loadtest

# Kafka jars, the S3 server and PostgreSQL: installed once, cached in ~/.cache/flts.
infra:
	bash infra/install.sh

clean:
	rm -rf .flts .pytest_cache
