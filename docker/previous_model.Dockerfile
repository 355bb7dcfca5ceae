# Image of the previous_model step of scheduled retraining (CPU base): finds the production model
# in the MLflow registry; writes what it was built from.
# The kfp component runs `python3 -m kfp.dsl.executor_main` in it. `make image-previous_model` builds it
# on the base built from the same commit (BASE) and names it REGISTRY/previous-model:TAG.
ARG BASE=localhost/sidreasoner/base-cpu:dev
FROM ${BASE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-previous-model" \
      org.opencontainers.image.description="sidreasoner previous_model step" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.sidreasoner.stage="previous_model"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}
# Fail the build, not a pipeline run, when the stage or the kfp executor cannot be imported.
RUN python3 -m components.previous_model --help > /dev/null \
    && python3 -c "import kfp.dsl.executor_main"
