# Image of the promote step of scheduled retraining (CPU base): registers the run's model and
# moves the production alias only if it scores better.
# The kfp component runs `python3 -m kfp.dsl.executor_main` in it. `make image-promote` builds it
# on the base built from the same commit (BASE) and names it REGISTRY/promote:TAG.
ARG BASE=localhost/sidreasoner/base-cpu:dev
FROM ${BASE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-promote" \
      org.opencontainers.image.description="sidreasoner promote step" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.sidreasoner.stage="promote"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}
# Fail the build, not a pipeline run, when the stage or the kfp executor cannot be imported.
RUN python3 -m components.promote --help > /dev/null \
    && python3 -c "import kfp.dsl.executor_main"
