# skyferry: every target installs what it needs first, so `make demo` and `make test`
# work on a fresh machine that has only Python >= 3.11 and make.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_COMPILE_BYTECODE := 1
export PATH := $(CURDIR)/.cache/bin:$(CURDIR)/.tools/bin:$(PATH)

UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
PYTEST_ARGS ?=
TARGET ?= aws
IMAGE_FLAGS ?=
export SKYFERRY_IMAGE_TARGET := $(TARGET)

.PHONY: help uv deps deps-app services demo image image-test test lint typecheck pytest bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

uv: ## install uv (into .tools/) when the machine has none
	@command -v uv >/dev/null 2>&1 || [ -x .tools/bin/uv ] || { \
	  python3 -m venv .tools && .tools/bin/pip install --quiet --disable-pip-version-check uv; }

deps-app: uv ## the app's locked dependencies only (enough for the demo)
	$(UV) sync --frozen --no-default-groups --all-extras

deps: uv ## everything the tests need: Python deps, npm emulators, helm and kubectl
	$(UV) sync --frozen --all-extras --all-groups
	@command -v npm >/dev/null || { echo "npm is needed for the emulators (Azurite, Cosmos DB): apt-get install -y npm" >&2; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	$(UV) run python scripts/install-tools.py

services: ## make sure PostgreSQL and a JetStream nats-server are up (scripts/ensure-services.sh)
	@bash scripts/ensure-services.sh

demo: deps-app ## the main job on the embedded default (SQLite + in-process broker)
	$(UV) run skyferry demo

lint: ## ruff
	$(UV) run ruff check .
	$(UV) run ruff format --check app providers stacks tests benchmarks

typecheck: ## mypy (strict)
	$(UV) run mypy

pytest: ## the test suite alone
	$(UV) run pytest --durations=20 $(PYTEST_ARGS)

image: ## build app/Dockerfile for TARGET=aws|azure|gcp|kubernetes with podman or docker (docs/image.md)
	python3 scripts/image.py --install --target $(TARGET) $(IMAGE_FLAGS) >/dev/null

image-test: image ## run the built image as the platforms run it (tests/image)
	$(UV) run pytest tests/image $(PYTEST_ARGS)

# The image's tests run in the one pytest run, beside the rest; `make image` before it installs the
# engine and builds (with no engine to be had, those tests skip, or fail under SKYFERRY_REQUIRE_SERVICES=1).
test: IMAGE_FLAGS = --if-possible
test: deps services image lint typecheck pytest ## the whole suite: lint, types, every test layer, the image

bench: deps services ## benchmarks, each figure beside the raw limit measured in the same run
	$(UV) run --frozen --group bench python -m benchmarks

clean: ## remove caches and local state
	rm -rf .cache .tools .venv node_modules .pytest_cache .mypy_cache .ruff_cache
