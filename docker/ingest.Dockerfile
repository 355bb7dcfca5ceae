# Image of the ingest stage (CPU base): reads the raw catalog and interactions; writes items, samples and stats.
# The kfp component runs `python3 -m kfp.dsl.executor_main` in it. `make image-ingest` builds it
# on the base built from the same commit (BASE) and names it REGISTRY/ingest:TAG.
ARG BASE=localhost/sidreasoner/base-cpu:dev
FROM ${BASE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-ingest" \
      org.opencontainers.image.description="sidreasoner ingest stage" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.sidreasoner.stage="ingest"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}
# Fail the build, not a pipeline run, when the stage or the kfp executor cannot be imported.
RUN python3 -m components.ingest --help > /dev/null \
    && python3 -c "import kfp.dsl.executor_main"
