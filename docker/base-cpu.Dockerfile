# Slim CPU base shared by the CPU stages' images (ingest, teacher_corpus).
# Build context: the repository root.
FROM python:3.11.7-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    DS_BUILD_OPS=0

# Exact versions of every dependency (pip freeze of the CPU venv); torch's CPU wheel index.
COPY requirements/lock-cpu.txt /tmp/lock-cpu.txt
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/lock-cpu.txt \
    && rm /tmp/lock-cpu.txt

# Our package, without dependencies (all pinned above).
COPY pyproject.toml README.md /opt/sidreasoner/
COPY components /opt/sidreasoner/components
COPY pipeline /opt/sidreasoner/pipeline
RUN pip install --no-deps /opt/sidreasoner \
    && useradd --create-home --uid 1000 sidreasoner
USER 1000:1000
WORKDIR /home/sidreasoner
