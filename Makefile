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

.PHONY: install demo test test-demo-results compile bench lock lock-images lock-stages image-sizes images push docker-engine clean smoke-gpu

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

# The suite runs on pytest-xdist workers, one per core and at most 4 (each holds its own servers,
# torch and stage subprocesses; TEST_WORKERS=0 runs it in one process); tests/conftest.py shares
# the tests out a module at a time.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The demo's results against the values the README reports (tests/e2e/pinned/demo_results.json):
# the whole demo pipeline on the pins' reproducible CPU kernels, 5-8 min; `make test` skips it.
test-demo-results: install
	SIDREASONER_DEMO_RESULTS=1 $(BIN)/python -m pytest -q tests/e2e/test_demo_results.py

# The GPU smoke run (README "GPU"): the smoke-gpu profile on one GPU, GRPO again with beam_rank
# rollouts, run.json with libraries, driver, GPUs, peak memory and tokens/s per stage; <= 10 min.
# SMOKE_PYTHON: an interpreter with the GPU packages (CUDA torch, vLLM: the GPU image, or
# pip install -c requirements/image-cuda.lock.txt -e '.[gpu]'); the dev venv's torch is CPU-only.
SMOKE_PYTHON ?= $(BIN)/python
smoke-gpu: $(if $(filter $(BIN)/python,$(SMOKE_PYTHON)),install)
	$(SMOKE_PYTHON) -m pipeline.smoke $(if $(SMOKE_OUT),--out $(SMOKE_OUT))

# The IR names the images `make images` builds: the tag is the same git-derived TAG, the registry
# REGISTRY when given, else the profile's images.registry (localhost/sidreasoner by default).
CONFIG ?= demo
compile: install
	$(BIN)/sidreasoner compile --config $(CONFIG) --out build/pipeline.yaml \
		$(if $(REGISTRY),--registry $(REGISTRY)) $(if $(TAG),--tag $(TAG))

bench: install
	$(BIN)/python -m benchmarks

# Re-pin every transitive dependency of the dev venv after a change to pyproject.toml (the
# images' locks: make lock-images).
lock: install
	{ head -2 $(LOCK); $(BIN)/pip freeze --exclude-editable | grep -v "^sidreasoner\|^# Editable"; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

# ---- Stage images ------------------------------------------------------------------------
# One image per stage, each built from its own context build/images/<stage>/ that
# `python -m pipeline.images context` assembles: its code, the shared code it imports, their
# third-party packages' hash lock, and the Dockerfile of its flavour (README "Images"). A change
# to one stage's code changes only its context. Each name is what `sidreasoner compile
# --registry R --tag T` writes into the IR (ImagesConfig.for_stage): R/<stage with _ as ->:T.
# The stages are the packages of components/ with a __main__.py (pipeline.images.stages).
STAGES := $(shell $(PYTHON) -m pipeline.images stages)
ifeq ($(STAGES),)
ifneq ($(filter images push contexts image-%,$(MAKECMDGOALS)),)
$(error `$(PYTHON) -m pipeline.images stages` named no stage: PYTHON must be a Python 3.11)
endif
endif
CONTEXTS := build/images

DEFAULT_REGISTRY := localhost/sidreasoner
IMAGE_REGISTRY = $(or $(REGISTRY),$(DEFAULT_REGISTRY))
# The commit, marked -dirty when tracked or untracked files differ from it (the build context
# then holds code no commit has). Computed once per make run.
ifneq ($(filter undefined,$(origin TAG) $(origin GIT_COMMIT)),)
DIRTY := $(if $(shell git status --porcelain 2>/dev/null),-dirty)
endif
ifeq ($(origin GIT_COMMIT),undefined)
GIT_COMMIT := $(shell git rev-parse HEAD 2>/dev/null)$(DIRTY)
endif
ifeq ($(origin TAG),undefined)
TAG := $(shell git rev-parse --short HEAD 2>/dev/null)$(DIRTY)
endif
image_name = $(IMAGE_REGISTRY)/$(subst _,-,$(1)):$(TAG)

ifneq ($(filter push,$(MAKECMDGOALS)),)
ifeq ($(REGISTRY),)
$(error make push needs REGISTRY=<registry path>, e.g. REGISTRY=europe-docker.pkg.dev/PROJECT/sidreasoner)
endif
endif

.PHONY: contexts image-mlflow-server $(addprefix image-,$(STAGES))

# No engine (this dev machine has only the client): stop before building anything.
docker-engine:
	@docker info >/dev/null 2>&1 || { echo "error: no Docker engine: 'docker info' failed;" \
		"make images needs a running Docker daemon (or DOCKER_HOST pointing at one). Nothing was built." >&2; exit 1; }

# The stage images and the in-cluster MLflow server's (manifests/base/mlflow.yaml).
images: $(addprefix image-,$(STAGES)) image-mlflow-server

# Every stage's build context, without building (no engine needed).
contexts:
	$(PYTHON) -m pipeline.images context $(STAGES) --out $(CONTEXTS)

$(addprefix image-,$(STAGES)): image-%: docker-engine
	$(PYTHON) -m pipeline.images context $* --out $(CONTEXTS)
	docker build --build-arg GIT_COMMIT=$(GIT_COMMIT) --tag $(call image_name,$*) $(CONTEXTS)/$*

# The MLflow server's context is the repository root; .dockerignore admits only its locks.
image-mlflow-server: docker-engine
	docker build --file docker/mlflow-server.Dockerfile --build-arg GIT_COMMIT=$(GIT_COMMIT) \
		--tag $(call image_name,mlflow-server) .

push: images
	for image in $(foreach image,$(STAGES) mlflow-server,$(call image_name,$(image))); do \
		docker push "$$image" || exit 1; done

# ---- Image lock files ---------------------------------------------------------------------
# Every image installs from a lock holding a sha256 for each file (pip install --require-hashes):
# a release replaced or pulled upstream (litellm 1.82.7/1.82.8 were compromised) cannot slip in.
# pip-compile runs in its own venv with this machine's pip config ignored (PIP_CONFIG_FILE), so
# the result depends only on the .in files, pyproject.toml and the index; it resolves for the
# interpreter running it, CPython 3.11 on linux x86_64, the images' platform.
# Nothing multi-GB is downloaded (the CUDA lock covers torch, vLLM and the nvidia wheels of every
# platform): fast-deps reads each wheel's METADATA through HTTP range requests (the index serves no
# PEP 658 metadata), and the hashes come from PyPI's JSON API. pip-tools 7.6.2 looks for that API
# at <index URL without /simple>/<name>/json, which misses pypi.org/pypi/<name>/json and makes it
# download and hash every file instead (tens of GB for the CUDA lock). Listing PYPI_JSON_API as an extra
# index points that lookup at the API; as an index it adds nothing (its <name>/ pages answer 404).
# Existing pins are kept where still valid; PIP_COMPILE_ARGS=--upgrade re-resolves everything.
PIP_TOOLS := pip-tools==7.6.2
PYPI_JSON_API ?= https://pypi.org/pypi/
LOCK_VENV := build/lock-venv
# torch's CPU wheel: the PyTorch CPU index, or a local wheel folder holding the same file.
TORCH_CPU_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),https://download.pytorch.org/whl/cpu/torch/)
LOCK_TOOLS := $(LOCK_VENV)/.$(PIP_TOOLS)
PIP_COMPILE = env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null DS_BUILD_OPS=0 \
	CUSTOM_COMPILE_COMMAND="make lock-images" $(LOCK_VENV)/bin/pip-compile --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	--extra-index-url $(PYPI_JSON_API) --pip-args "--use-feature=fast-deps" $(PIP_COMPILE_ARGS)

$(LOCK_TOOLS):
	$(PYTHON) -c 'import sys, platform; assert sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64", \
		"lock with CPython 3.11 on x86_64, the images platform"'
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q pip==26.3 $(PIP_TOOLS)
	touch $(LOCK_TOOLS)

lock-images: $(LOCK_TOOLS)
	$(PIP_COMPILE) --output-file requirements/image-build.lock.txt requirements/image-build.in
	$(PIP_COMPILE) --find-links $(TORCH_CPU_FIND_LINKS) \
		--output-file requirements/image-cpu.lock.txt pyproject.toml requirements/image-cpu.in
	$(PIP_COMPILE) --extra gpu --output-file requirements/image-cuda.lock.txt pyproject.toml requirements/image-cuda.in
	$(PIP_COMPILE) --output-file requirements/mlflow-server.lock.txt requirements/mlflow-server.in
	$(MAKE) --no-print-directory lock-stages

# Each stage image's lock, requirements/stages/<stage>.lock.txt: from the full lock of its
# flavour (image-cpu or image-cuda), what its code imports, the kfp executor and everything
# they require, read from the full lock's `# via` comments (no network). The dev venv maps
# import names to distributions. Then `make image-sizes` when a pin changed.
lock-stages: install
	$(BIN)/python -m pipeline.images locks

# The README's image sizes: pip downloads each file the stage images install that
# requirements/stages/sizes.json does not hold yet (from scratch several GB, the CUDA wheels; the
# package index only), checks it against the locks' hashes and records its size there; the
# README table is rewritten from it. After a lock change that only drops packages: no download.
image-sizes: install
	$(BIN)/python -m pipeline.images sizes --find-links $(TORCH_CPU_FIND_LINKS)

clean:
	rm -rf build .pytest_cache
