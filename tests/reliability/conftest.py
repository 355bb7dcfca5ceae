"""Fixtures shared by the reliability tables."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow sqlite store for every row (creating a store costs seconds; using one, milliseconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random model knowing the synthetic catalog's SID tokens (rows copy it)."""
    from tests.reliability.inputs import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture
def teacher(monkeypatch):
    """A fresh local teacher server (tests/teacher_server.py) and its API key in the environment."""
    from tests.teacher_corpus.helpers import API_KEY, API_KEY_ENV
    from tests.teacher_server import TeacherServer

    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    with TeacherServer() as server:
        yield server


@pytest.fixture
def hashed_encoder(monkeypatch):
    """sid_quantize's encoder replaced by a hash of each text (tests/sid_quantize/conftest.py):
    a row that gets as far as embedding does so in milliseconds."""
    from components.sid_quantize import encoders
    from tests.sid_quantize.conftest import hashed_vectors

    monkeypatch.setattr(encoders, "encode_texts", lambda texts, cfg: hashed_vectors(texts))
