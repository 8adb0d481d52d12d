# The two commands: `make run` (the whole mesh, embedded infrastructure) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MEMBERS := contracts libs/infra services/users services/rooms services/history services/ws-edge compose
PACKAGES := contracts/src libs/infra/src services/users/src services/rooms/src services/history/src services/ws-edge/src compose/src

# pip on some machines warns about unreachable local find-links folders: keep real errors only
PIPFILTER := { grep -v "is ignored: it is neither" || true; }

.PHONY: run test browser lint typecheck unit integration faults install lock clean provision asyncapi bench bench-deps

# Check ports first so a running mesh is never disturbed by a second `make run` (no build step
# touches anything before the check passes).
run:
	@$(PY) compose/preflight.py
	@$(MAKE) -s --no-print-directory install
	@$(BIN)/python -m mesh run

install: $(STAMP) compose/node_modules/.installed

$(STAMP): requirements.lock $(foreach m,$(MEMBERS),$(m)/pyproject.toml)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --require-hashes -r requirements.lock 2>&1 | $(PIPFILTER)
	@$(BIN)/python -m pip install -q --no-deps --no-build-isolation $(foreach m,$(MEMBERS),-e $(m)) 2>&1 | $(PIPFILTER)
	@touch $@

compose/node_modules/.installed: compose/package.json compose/package-lock.json
	@cd compose && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

lock:
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q uv
	@$(BIN)/uv pip compile requirements.in --python 3.11 --generate-hashes --no-header -o requirements.lock

lint: install
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy $(PACKAGES)
	@$(BIN)/mypy bench

test: install lint browser bench-deps
	@bash scripts/install-nginx.sh
	@$(BIN)/python -m pytest -p no:cacheprovider -m "not faults" $(PYTEST_ARGS)

# The fault suite (tests/faults, docs/reliability.md): real processes killed under traffic, each
# scenario printing its figures (also appended to data/faults-figures.txt).
faults: install
	@$(BIN)/python -m pytest -p no:cacheprovider -m faults -s -q tests/faults $(PYTEST_ARGS)

# `make bench` (docs/performance.md): this mesh, python-socketio and Node socket.io under the same
# load, results in bench/results/. Options: STACKS=mesh,pysio,node
# SCENARIOS=idle,latency,fanout,linear,history,ingest,hops RUNS=3 QUICK=1 PROFILE=1 LOADGENS=1 BENCH_ARGS=...
BENCH_NODE := bench/peers/node/node_modules/.installed bench/loadgen/node_modules/.installed

bench: install bench-deps
	@$(BIN)/python bench/run.py $(if $(STACKS),--stacks $(STACKS)) $(if $(SCENARIOS),--scenarios $(SCENARIOS)) $(if $(RUNS),--runs $(RUNS)) $(if $(QUICK),--quick) $(if $(PROFILE),--profile) $(if $(LOADGENS),--loadgens $(LOADGENS)) $(BENCH_ARGS)

bench-deps: $(BENCH_NODE)

bench/%/node_modules/.installed: bench/%/package.json bench/%/package-lock.json
	@cd bench/$* && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian's chromium for the browser tests (apt-get, only when /usr/bin/chromium is missing)
browser:
	@bash scripts/install-chromium.sh

provision: install
	@$(BIN)/python -m infra.provision

# The AsyncAPI document is generated from the contracts package (tests/ops/test_asyncapi.py
# fails when the committed one differs): run this after changing a bus or WS model or subject.
asyncapi: install
	@$(BIN)/python -m contracts.asyncapi > docs/asyncapi.json

clean:
	rm -rf $(VENV) compose/node_modules bench/peers/node/node_modules bench/loadgen/node_modules
