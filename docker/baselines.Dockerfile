# Image of the baselines stage (CPU base): popularity and SASRec on a CPU node, ranking every valid and test row.
# The kfp component runs `python3 -m kfp.dsl.executor_main` in it. `make image-baselines` builds it
# on the base built from the same commit (BASE) and names it REGISTRY/baselines:TAG.
ARG BASE=localhost/sidreasoner/base-cpu:dev
FROM ${BASE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-baselines" \
      org.opencontainers.image.description="sidreasoner baselines stage" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.sidreasoner.stage="baselines"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}
# Fail the build, not a pipeline run, when the stage or the kfp executor cannot be imported.
RUN python3 -m components.baselines --help > /dev/null \
    && python3 -c "import kfp.dsl.executor_main"
