# Slim CPU base of the CPU stage images (ingest, teacher_corpus): every dependency from the hash
# lock requirements/image-cpu.lock.txt (torch's CPU build: no CUDA libraries), then our package.
# Built by `make images` with the repository root as context (.dockerignore lets in only the
# package sources and the locks).
FROM python:3.11.7-slim-bookworm

ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-base-cpu" \
      org.opencontainers.image.description="sidreasoner CPU stage base: Python 3.11, hash-locked dependencies, torch CPU build" \
      org.opencontainers.image.base.name="python:3.11.7-slim-bookworm" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    DS_BUILD_OPS=0

# Every file is checked against its sha256 in the locks (--require-hashes). The build backend is
# installed first so the lock's sdists and our package build without isolation, i.e. without
# fetching unchecked build dependencies. --no-deps: the lock is complete, and pip check proves it.
# torch's CPU wheel is served by the PyTorch CPU index; the hash pins the exact file whichever
# index serves a name (pip discards candidates whose index hash is not in the lock).
COPY requirements/image-build.lock.txt requirements/image-cpu.lock.txt /tmp/requirements/
RUN pip install --require-hashes --no-deps -r /tmp/requirements/image-build.lock.txt \
    && pip install --require-hashes --no-deps --no-build-isolation \
        --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/requirements/image-cpu.lock.txt \
    && pip check \
    && rm -r /tmp/requirements

# Our package, without dependencies (all locked above). Non-root user with a numeric UID, so a
# pod's runAsNonRoot can verify it.
COPY pyproject.toml README.md /tmp/sidreasoner/
COPY components /tmp/sidreasoner/components
COPY pipeline /tmp/sidreasoner/pipeline
RUN pip install --no-deps --no-build-isolation /tmp/sidreasoner \
    && rm -r /tmp/sidreasoner \
    && useradd --create-home --uid 1000 --user-group sidreasoner
USER 1000:1000
WORKDIR /home/sidreasoner
