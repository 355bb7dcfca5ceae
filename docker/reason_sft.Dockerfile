# Image of the reason_sft stage (CUDA base): reasoning-activation SFT (TRL, DeepSpeed).
# The kfp component runs `python3 -m kfp.dsl.executor_main` in it. `make image-reason_sft` builds it
# on the base built from the same commit (BASE) and names it REGISTRY/reason-sft:TAG.
ARG BASE=localhost/sidreasoner/base-cuda:dev
FROM ${BASE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-reason-sft" \
      org.opencontainers.image.description="sidreasoner reason_sft stage" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.sidreasoner.stage="reason_sft"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}
# Fail the build, not a pipeline run, when the stage or the kfp executor cannot be imported.
RUN python3 -m components.reason_sft --help > /dev/null \
    && python3 -c "import kfp.dsl.executor_main"
