"""The baselines learn from the demo catalog the evaluation tests use."""

from tests.evaluate.conftest import eval_inputs  # noqa: F401 (the fixture)
