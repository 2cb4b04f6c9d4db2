# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
CONFIG ?= config/router.yaml
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: run test lint protos check-protos bench bench-replay install clean validate fuzz bytecode native

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

generated/routing_sidecar_api/__init__.py: | $(STAMP)
	scripts/gen_protos.sh generated

protos: $(STAMP)
	scripts/gen_protos.sh generated

check-protos: $(STAMP)
	scripts/check_protos.sh

# Bytecode for the editable install, as a wheel install (and the image) has it, so that a start
# does not compile every module again, also where PYTHONDONTWRITEBYTECODE is set; and the code
# of the dataclasses' generated methods (src/routing_sidecar/dataclass_code.py), as the image has.
bytecode: native generated/routing_sidecar_api/__init__.py
	$(BIN)/python -m compileall -q src generated bench
	$(BIN)/python -m routing_sidecar.dataclass_code >/dev/null

# The modules every Route runs, compiled by mypyc in place beside their source when one is
# missing or its source changed since (src/routing_sidecar/native.py).
native: $(STAMP)
	$(BIN)/python -c 'import sys; from routing_sidecar.native import build; sys.exit(build())'

run: bytecode
	mkdir -p var
	$(BIN)/routing-sidecar serve --config $(CONFIG)

validate: $(STAMP)
	$(BIN)/routing-sidecar validate $(CONFIG)

lint: $(STAMP) generated/routing_sidecar_api/__init__.py
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	cd protos && $(BIN)/buf lint
	scripts/check_protos.sh

test: lint native
	$(BIN)/pytest -q

# The fuzz suite at length (`make test` runs it briefly): thousands of examples per RPC,
# random each run; a failure is kept in .hypothesis/ and replayed first next time.
fuzz: $(STAMP) generated/routing_sidecar_api/__init__.py
	ROUTING_FUZZ_PROFILE=fuzz $(BIN)/pytest -q tests/fuzz --hypothesis-show-statistics

bench: bytecode
	$(BIN)/python -m bench.latency

bench-replay: $(STAMP)
	$(BIN)/python -m bench.replay

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache build
	find src -name '*.so' -delete
	rm -f src/routing_sidecar/native.sums
