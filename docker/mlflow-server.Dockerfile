# The in-cluster MLflow tracking server (manifests/base/mlflow.yaml): Postgres store, GCS artifacts.
FROM python:3.11.7-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True
COPY requirements/mlflow-server.lock.txt /tmp/lock.txt
RUN pip install --require-hashes -r /tmp/lock.txt && rm /tmp/lock.txt \
    && useradd --create-home --uid 1000 mlflow
USER 1000:1000
EXPOSE 5000
