"""Fixtures of the teacher corpus tests: a fresh local teacher server and the API key."""

from __future__ import annotations

import pytest

from tests.teacher_corpus.helpers import API_KEY, API_KEY_ENV
from tests.teacher_server import TeacherServer


@pytest.fixture
def teacher():
    """A local OpenAI-compatible teacher on 127.0.0.1 (see tests/teacher_server.py)."""
    with TeacherServer() as server:
        yield server


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    return API_KEY
