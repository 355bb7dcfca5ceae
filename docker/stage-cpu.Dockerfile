# Template of every CPU stage image. `python -m pipeline.images context STAGE` copies it into the
# stage's build context build/images/<stage>/ as its Dockerfile, with ARG STAGE set to the stage,
# next to exactly what the image holds: requirements/stage.lock.txt (the stage's hash lock, from
# image-cpu.lock.txt: torch, when the stage imports it, is the CPU build, so no CUDA libraries),
# the build backend's lock, the stage's code and the shared code it imports, and a pyproject.toml
# installing that code. `make image-<stage>` builds it (README "Images").
FROM python:3.11.7-slim-bookworm

ARG STAGE
LABEL org.opencontainers.image.title="sidreasoner-${STAGE}" \
      org.opencontainers.image.description="sidreasoner ${STAGE} stage (CPU): Python 3.11, hash-locked dependencies" \
      org.opencontainers.image.base.name="python:3.11.7-slim-bookworm" \
      io.sidreasoner.stage="${STAGE}"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True

# Every file is checked against its sha256 in the locks (--require-hashes). The build backend is
# installed first so the lock's sdists and the stage's code build without isolation, i.e. without
# fetching unchecked build dependencies. --no-deps: the lock is complete, and pip check proves it.
# torch's CPU wheel is served by the PyTorch CPU index; the hash pins the exact file whichever
# index serves a name (pip discards candidates whose hash is not in the lock).
COPY requirements /tmp/requirements
RUN pip install --require-hashes --no-deps -r /tmp/requirements/image-build.lock.txt \
    && pip install --require-hashes --no-deps --no-build-isolation \
        --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/requirements/stage.lock.txt \
    && pip check \
    && rm -r /tmp/requirements \
    && useradd --create-home --uid 1000 --user-group sidreasoner

# The stage's code, without dependencies (all locked above): the layers above are reused until
# the stage's lock changes.
COPY pyproject.toml /tmp/stage/
COPY components /tmp/stage/components
RUN pip install --no-deps --no-build-isolation /tmp/stage \
    && rm -r /tmp/stage

# Non-root user with a numeric UID, so a pod's runAsNonRoot can verify it.
USER 1000:1000
WORKDIR /home/sidreasoner

# The commit comes last: a new commit relabels the image without invalidating the layers above.
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.revision="${GIT_COMMIT}"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}

# Fail the build, not a pipeline run, when the stage or the kfp executor of the component command
# (python3 -m kfp.dsl.executor_main) cannot be imported.
RUN python3 -m "components.${STAGE}" --help > /dev/null \
    && python3 -c "import kfp.dsl.executor_main"
