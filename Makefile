# One command each on a fresh clone: every target installs the pinned venv first when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock-cpu.txt
DEMO_OUT ?= build/runs/demo-$(shell date +%Y%m%d-%H%M%S)

export LITELLM_LOCAL_MODEL_COST_MAP := True
export TOKENIZERS_PARALLELISM := false
export DS_BUILD_OPS := 0

.PHONY: install demo test compile bench lock clean

install: $(STAMP)

# torch 2.13.0 resolves to the CPU wheel on this machine's local disk (pip find-links);
# installing it first keeps pip from pulling a multi-GB CUDA build for another package.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==26.3
	$(BIN)/pip install -q -c $(LOCK) torch==2.13.0
	$(BIN)/pip install -q -c $(LOCK) -e '.[test,bench]'
	$(BIN)/pip check
	touch $(STAMP)

demo: install
	$(BIN)/sidreasoner demo-data --out build/demo-data
	$(BIN)/sidreasoner run --config demo --out $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest -q

compile: install
	$(BIN)/sidreasoner compile --config demo --out build/pipeline.yaml

bench: install
	$(BIN)/python -m benchmarks

# Re-pin every transitive dependency after a change to pyproject.toml.
lock: install
	{ head -2 $(LOCK); $(BIN)/pip freeze --exclude-editable | grep -v "^sidreasoner\|^# Editable"; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

clean:
	rm -rf build .pytest_cache
