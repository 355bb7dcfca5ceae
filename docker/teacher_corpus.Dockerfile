# Image of the teacher_corpus stage (CPU base): asks the teacher LLM (litellm) for reasoning traces; writes the SFT corpus.
# The kfp component runs `python3 -m kfp.dsl.executor_main` in it. `make image-teacher_corpus` builds it
# on the base built from the same commit (BASE) and names it REGISTRY/teacher-corpus:TAG.
ARG BASE=localhost/sidreasoner/base-cpu:dev
FROM ${BASE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-teacher-corpus" \
      org.opencontainers.image.description="sidreasoner teacher_corpus stage" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.sidreasoner.stage="teacher_corpus"
ENV SIDREASONER_GIT_COMMIT=${GIT_COMMIT}
# Fail the build, not a pipeline run, when the stage or the kfp executor cannot be imported.
RUN python3 -m components.teacher_corpus --help > /dev/null \
    && python3 -c "import kfp.dsl.executor_main"
