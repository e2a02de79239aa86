# deployer: the two commands of the quick start are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
MANIFEST ?= manifests/iris.yaml
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: docker-ready install up test test-unit test-grpc test-docker bench bench-promote lint image deploy down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

up: install
	$(BIN)/deployer up -f $(MANIFEST)

down: install
	$(BIN)/deployer down -f $(MANIFEST)

docker-ready:
	@scripts/ensure-docker

# Outside CI a machine without Docker still runs the unit and gRPC tiers (the Docker tier skips);
# under CI=true a missing image fails here and a skipped tier fails .ci/run.
test: install docker-ready
	@$(MAKE) --no-print-directory image || { [ "$${CI:-}" != true ] && echo "make test: no compatible image; the Docker tier will skip" >&2; }
	$(BIN)/python -m pytest -ra

test-unit: install
	$(BIN)/python -m pytest -ra tests/unit

test-grpc: install
	$(BIN)/python -m pytest -ra tests/grpc

test-docker: install image
	$(BIN)/python -m pytest -ra tests/docker

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

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
