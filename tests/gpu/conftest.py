"""Fixtures the GPU tests share with the training tests: the synthetic inputs of a 16-item
catalog and one MLflow store for the session."""

from tests.training.conftest import synthetic, tracking_uri  # noqa: F401 (fixtures)
