# CUDA base of the GPU stage images (sid_quantize, align_sft, reason_sft, grpo, evaluate): torch's
# CUDA build, DeepSpeed and vLLM from the hash lock requirements/image-cuda.lock.txt, then our
# package. The CUDA user space (runtime, cuBLAS, cuDNN, NCCL, NVRTC, ...) is the nvidia-* wheels
# torch pins, hash-locked like every other file; the driver (libcuda) comes from the node. Why
# not an nvidia/cuda base: README "Images". Built by `make images` from the repository root.
FROM python:3.11.7-slim-bookworm

ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-base-cuda" \
      org.opencontainers.image.description="sidreasoner GPU stage base: Python 3.11, hash-locked torch CUDA build, DeepSpeed, vLLM" \
      org.opencontainers.image.base.name="python:3.11.7-slim-bookworm" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

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
# installed first so the lock's sdists (deepspeed) and our package build without isolation, i.e.
# without fetching unchecked build dependencies. --no-deps: the lock is complete; pip check proves it.
COPY requirements/image-build.lock.txt requirements/image-cuda.lock.txt /tmp/requirements/
RUN pip install --require-hashes --no-deps -r /tmp/requirements/image-build.lock.txt \
    && pip install --require-hashes --no-deps --no-build-isolation -r /tmp/requirements/image-cuda.lock.txt \
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
