# Image of the ingest stage: the kfp component runs `python3 -m kfp.dsl.executor_main` in it.
ARG BASE=sidreasoner/base-cpu:dev
FROM ${BASE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-ingest" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}
