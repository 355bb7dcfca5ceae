# The in-cluster MLflow tracking server (manifests/base/mlflow.yaml): Postgres store, GCS artifacts.
# Dependencies from the hash lock requirements/mlflow-server.lock.txt, installed as in the stage
# images (build backend first, no build isolation, --no-deps, pip check).
FROM python:3.11.7-slim-bookworm
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sidreasoner-mlflow-server" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True
COPY requirements/image-build.lock.txt requirements/mlflow-server.lock.txt /tmp/requirements/
RUN pip install --require-hashes --no-deps -r /tmp/requirements/image-build.lock.txt \
    && pip install --require-hashes --no-deps --no-build-isolation -r /tmp/requirements/mlflow-server.lock.txt \
    && pip check \
    && rm -r /tmp/requirements \
    && useradd --create-home --uid 1000 --user-group mlflow
USER 1000:1000
EXPOSE 5000
