# One task runner. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml native/Cargo.toml Cargo.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==25.3
	$(BIN)/pip install -q -e '.[dev]'
	# the dashboard's browser test drives Debian's Chromium (browsers are not downloadable
	# here); the load smoke test drives wrk; the operator kit's test runs Debian's Prometheus
	# (and promtool) against a running server
	(command -v chromium && command -v wrk && command -v prometheus && command -v promtool) \
		>/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium wrk prometheus >/dev/null)
	touch $(STAMP)

setup: $(STAMP) native ## create .venv and install everything (Python deps and the Rust crate)

native: $(STAMP) ## (re)build the Rust extension into service/
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop --release --skip-install -q

run: setup ## run everything on this machine (embedded Postgres + Redis, server, worker)
	$(BIN)/sense run

lint: setup ## ruff, mypy (and the native module's stub against the built module), cargo fmt and clippy
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest service._native
	cargo fmt --all -- --check
	cargo clippy --all-targets -q -- -D warnings

rust-test: ## cargo test for the native crate
	cargo test -q --workspace

pytest: setup ## Python tests: unit, integration (embedded Postgres/Redis), e2e
	$(BIN)/pytest -q

test: setup lint rust-test pytest ## the whole suite: what CI runs

fmt: setup ## format Python and Rust
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	cargo fmt --all

clean: ## remove build outputs and local data
	rm -rf target .sense .pytest_cache .mypy_cache .ruff_cache .hypothesis service/*.so

.PHONY: help setup native run lint rust-test pytest test fmt clean

include bench/bench.mk
