"""Recommend fixtures: the evaluation's inputs (demo catalog, SID map, tiny random SID model)."""

from tests.evaluate.conftest import eval_inputs  # noqa: F401 (a fixture, shared)
