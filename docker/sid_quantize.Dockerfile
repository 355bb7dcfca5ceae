# Image of the sid_quantize stage (CUDA base): embeds item texts and quantizes them into Semantic IDs; a large encoder needs the GPU.
# The kfp component runs `python3 -m kfp.dsl.executor_main` in it. `make image-sid_quantize` builds it
# on the base built from the same commit (BASE) and names it REGISTRY/sid-quantize:TAG.
ARG BASE=localhost/sidreasoner/base-cuda:dev
FROM ${BASE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-sid-quantize" \
      org.opencontainers.image.description="sidreasoner sid_quantize stage" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.sidreasoner.stage="sid_quantize"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}
# Fail the build, not a pipeline run, when the stage or the kfp executor cannot be imported.
RUN python3 -m components.sid_quantize --help > /dev/null \
    && python3 -c "import kfp.dsl.executor_main"
