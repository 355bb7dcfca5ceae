# Image of the align_sft stage (CUDA base): SID-language alignment SFT (TRL, DeepSpeed).
# The kfp component runs `python3 -m kfp.dsl.executor_main` in it. `make image-align_sft` builds it
# on the base built from the same commit (BASE) and names it REGISTRY/align-sft:TAG.
ARG BASE=localhost/sidreasoner/base-cuda:dev
FROM ${BASE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-align-sft" \
      org.opencontainers.image.description="sidreasoner align_sft stage" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.sidreasoner.stage="align_sft"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}
# Fail the build, not a pipeline run, when the stage or the kfp executor cannot be imported.
RUN python3 -m components.align_sft --help > /dev/null \
    && python3 -c "import kfp.dsl.executor_main"
