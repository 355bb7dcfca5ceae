# Image of the evaluate stage (CUDA base): trie-constrained decoding (vLLM or transformers) and item-level metrics.
# The kfp component runs `python3 -m kfp.dsl.executor_main` in it. `make image-evaluate` builds it
# on the base built from the same commit (BASE) and names it REGISTRY/evaluate:TAG.
ARG BASE=localhost/sidreasoner/base-cuda:dev
FROM ${BASE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-evaluate" \
      org.opencontainers.image.description="sidreasoner evaluate stage" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.sidreasoner.stage="evaluate"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}
# Fail the build, not a pipeline run, when the stage or the kfp executor cannot be imported.
RUN python3 -m components.evaluate --help > /dev/null \
    && python3 -c "import kfp.dsl.executor_main"
