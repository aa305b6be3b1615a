# coach-suite. Two commands (README.md):
#   make up     install what is needed, then run the whole suite in the foreground (Ctrl-C stops it)
#   make test   the same set-up, then every check and the whole test suite (.ci/run calls it)
#
# Needs only Python 3.11+ (PYTHON=python3.12 to choose one). npm, when present, brings buf for
# the proto lint; docker-compose / kubectl are used by docker-config / k8s-validate if present.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.coach-installed
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
BUF_STAMP := .tools/.buf-$(BUF_VERSION)
K8S_VERSION := 1.31.0
ARGS ?=

.PHONY: help venv up env test lint ruff typecheck proto proto-lint proto-check proto-breaking \
        pytest test-fast eval bench bench-levers bench-open-loop train-router \
        docker-config k8s-validate clean

help:
	@echo "make up             run the suite (embedded PostgreSQL + offline upstream unless"
	@echo "                    DATABASE_URL / OPENAI_API_KEY / OPENAI_BASE_URL are set)"
	@echo "make test           proto lint, gen/ staleness, buf breaking against main, ruff, mypy,"
	@echo "                    pytest"
	@echo "make env            only PostgreSQL + the offline upstream; prints export lines"
	@echo "make lint           proto lint + ruff + mypy       make pytest   only the tests"
	@echo "make test-fast      the unit tests only (no service, no database): seconds"
	@echo "make proto          regenerate gen/ from protos/"
	@echo "make eval / bench   router evaluation (held-out, cross-validation, curve) / benchmark"
	@echo "make bench-levers   cost per cache regime, conversation length and lever (issue 18)"
	@echo "make bench-open-loop  the highest arrival rate held, one replica of each and two (issue 19)"
	@echo "make train-router   refit the router's learned heads from its corpus (byte for byte)"
	@echo "make docker-config  validate docker-compose.yml     make k8s-validate   the k8s manifests"
	@echo "make clean          remove .venv, .tools and caches (keeps .coach/, the database)"

# ---- set-up ---------------------------------------------------------------------------------

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml scripts/venv.sh
	@PYTHON="$(PYTHON)" scripts/venv.sh $(VENV)
	@touch $@

venv: $(STAMP)

$(BUF_STAMP):
	@echo "installing buf $(BUF_VERSION) into .tools/ (npm @bufbuild/buf)"
	@mkdir -p .tools
	@npm install --prefix .tools --no-audit --no-fund --loglevel=error --save-exact \
	    @bufbuild/buf@$(BUF_VERSION) >/dev/null
	@$(BUF) --version | grep -qx '$(BUF_VERSION)'
	@touch $@

# ---- the two commands -------------------------------------------------------------------------

up: venv
	$(PY) -m services.suite up

env: venv
	$(PY) -m services.suite env

test: venv lint proto-check proto-breaking pytest

# ---- checks ---------------------------------------------------------------------------------

lint: venv proto-lint ruff typecheck

proto-lint:
	@if command -v npm >/dev/null 2>&1 || [ -f $(BUF_STAMP) ]; then \
	    $(MAKE) -s $(BUF_STAMP) && (cd protos && ../$(BUF) lint) && echo "buf lint: protos/ ok"; \
	else \
	    echo "proto lint: SKIPPED: npm not found (install Node.js + npm to lint protos with buf $(BUF_VERSION))"; \
	fi

proto-check: venv
	@PYTHON=$(PY) scripts/check_protos.sh

# protos/ against main, or against main's previous commit on main itself
# (BUF_BREAKING_AGAINST=<git revision> for another): nothing a caller sees on the wire or in
# JSON may change (rules in protos/buf.yaml).
proto-breaking: venv
	@if command -v npm >/dev/null 2>&1 || [ -f $(BUF_STAMP) ]; then \
	    $(MAKE) -s $(BUF_STAMP) && $(PY) scripts/check_breaking.py --buf $(BUF); \
	else \
	    echo "buf breaking: SKIPPED: npm not found (install Node.js + npm to check protos with buf)"; \
	fi

ruff: venv
	$(PY) -m ruff check services tests bench scripts
	@echo "ruff: ok"

typecheck: venv
	$(PY) -m mypy

pytest: venv
	$(PY) -m pytest -q -p no:cacheprovider $(ARGS)

# Markers (pyproject.toml, applied by folder in tests/conftest.py): unit, integration, faults,
# slow. ARGS='-m "integration and not slow"' etc. picks another set.
test-fast: venv
	$(PY) -m pytest -q -p no:cacheprovider -m unit $(ARGS)

proto: venv
	PYTHON=$(PY) scripts/gen_protos.sh
	@if [ -f $(BUF_STAMP) ] || command -v npm >/dev/null 2>&1; then $(MAKE) proto-lint; fi

# ---- evaluation and benchmarks (scripts written by their owners) -----------------------------

eval: venv
	$(PY) scripts/eval_router.py --svg docs/router-cost-quality.svg $(ARGS)

# The router's learned heads from services/router/training/corpus/ (byte for byte; seeded).
train-router: venv
	$(PY) -m services.router.training.train $(ARGS)

# Issue 18's cost table: per cache regime, conversation length and lever (about 20 minutes).
bench-levers: venv
	$(PY) -m bench.cost_levers $(ARGS)

# Issue 19's open loop: messages at set rates from established users, one replica of each and
# two; the highest rate whose Chat p99 stays within the upstream latency + 250 ms (about 6 minutes).
bench-open-loop: venv
	$(PY) -m bench.open_loop --replicas "" --replicas "router=2,threads=2,llm=2" \
	    --rates 60,80,90,100,110 $(ARGS)

bench: venv
	@if [ -f scripts/bench.py ]; then set -x; $(PY) scripts/bench.py $(ARGS); \
	elif [ -f bench/run.py ]; then set -x; $(PY) -m bench.run $(ARGS); \
	else echo "the benchmark (scripts/bench.py) is not written yet" >&2; exit 1; fi

# ---- deployment files ------------------------------------------------------------------------

docker-config:
	@if command -v docker-compose >/dev/null 2>&1; then \
	    docker-compose config -q && echo "docker-compose.yml: valid (docker-compose $$(docker-compose version --short))"; \
	elif docker compose version >/dev/null 2>&1; then \
	    docker compose config -q && echo "docker-compose.yml: valid (docker compose)"; \
	else \
	    echo "docker-config: neither docker-compose nor 'docker compose' is installed" \
	         "(apt-get install docker-compose)" >&2; exit 1; \
	fi

k8s-validate: venv
	$(PY) scripts/k8s_validate.py --kubernetes-version $(K8S_VERSION)

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
	find services tests scripts gen -name __pycache__ -type d -prune -exec rm -rf {} +
