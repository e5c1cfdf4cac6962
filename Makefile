# The two commands a newcomer runs: `make demo` and `make test`.
# Each creates or refreshes .venv (uv, cached in ~/.cache/uv) with the exact versions of
# requirements.lock, and is a no-op install when neither file changed since the last run.
# After changing dependencies in pyproject.toml: `make lock`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
PYTEST_ARGS ?=

.PHONY: demo test venv-demo venv-test infra lint lock bench clean

demo: venv-demo
	$(BIN)/flts demo

test: venv-test infra
	$(BIN)/python -m pytest $(PYTEST_ARGS)

venv-demo: $(VENV)/.installed-demo
venv-test: $(VENV)/.installed-test

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed-demo: pyproject.toml requirements.lock | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -c requirements.lock -e '.[all]'
	touch $@

$(VENV)/.installed-test: pyproject.toml requirements.lock | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -c requirements.lock -e '.[dev]'
	touch $@ $(VENV)/.installed-demo

lock: | $(UV)
	$(UV) pip compile pyproject.toml --all-extras --python-version 3.11 --quiet -o requirements.lock
	$(BIN)/flts deploy render  # the functions' pinned requirements.txt follow the lock

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
