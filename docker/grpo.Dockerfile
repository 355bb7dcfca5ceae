# Image of the grpo stage (CUDA base): GRPO with vLLM rollouts (TRL, DeepSpeed, vLLM).
# The kfp component runs `python3 -m kfp.dsl.executor_main` in it. `make image-grpo` builds it
# on the base built from the same commit (BASE) and names it REGISTRY/grpo:TAG.
ARG BASE=localhost/sidreasoner/base-cuda:dev
FROM ${BASE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-grpo" \
      org.opencontainers.image.description="sidreasoner grpo stage" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.sidreasoner.stage="grpo"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}
# Fail the build, not a pipeline run, when the stage or the kfp executor cannot be imported.
RUN python3 -m components.grpo --help > /dev/null \
    && python3 -c "import kfp.dsl.executor_main"
