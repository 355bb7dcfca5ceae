# Template of every GPU stage image. `python -m pipeline.images context STAGE` copies it into the
# stage's build context build/images/<stage>/ as its Dockerfile, with ARG STAGE set to the stage,
# next to exactly what the image holds: requirements/stage.lock.txt (the stage's hash lock, from
# image-cuda.lock.txt: torch's CUDA build, and vLLM and DeepSpeed where the stage uses them), the
# build backend's lock, the stage's code and the shared code it imports, and a pyproject.toml
# installing that code. `make image-<stage>` builds it (README "Images").
# The CUDA user space (runtime, cuBLAS, cuDNN, NCCL, NVRTC, ...) is the nvidia-* wheels torch pins,
# hash-locked like every other file; the driver (libcuda) comes from the node. Why not an
# nvidia/cuda base: README "Images".
FROM python:3.11.7-slim-bookworm

ARG STAGE
LABEL org.opencontainers.image.title="sidreasoner-${STAGE}" \
      org.opencontainers.image.description="sidreasoner ${STAGE} stage (CUDA): Python 3.11, hash-locked torch CUDA build" \
      org.opencontainers.image.base.name="python:3.11.7-slim-bookworm" \
      io.sidreasoner.stage="${STAGE}"

# GKE mounts the node's driver under /usr/local/nvidia; the NVIDIA container toolkit (other
# clusters) reads NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES. Both as in nvidia/cuda images.
# DS_BUILD_OPS=0: DeepSpeed installs without compiled ops and builds a C++ op only when one is used.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    DS_BUILD_OPS=0 \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib \
    PATH=/usr/local/nvidia/bin:${PATH} \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# A C/C++ toolchain: Triton (vLLM's and torch.compile's kernels) compiles its launcher against the
# Python headers of this image at run time, and DeepSpeed JIT-builds its C++ ops.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*

# Every file is checked against its sha256 in the locks (--require-hashes). The build backend is
# installed first so the lock's sdists (deepspeed) and the stage's code build without isolation,
# i.e. without fetching unchecked build dependencies. --no-deps: the lock is complete; pip check
# proves it.
COPY requirements /tmp/requirements
RUN pip install --require-hashes --no-deps -r /tmp/requirements/image-build.lock.txt \
    && pip install --require-hashes --no-deps --no-build-isolation -r /tmp/requirements/stage.lock.txt \
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
