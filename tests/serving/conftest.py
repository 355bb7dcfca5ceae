"""Serving fixtures: the evaluation's inputs (demo catalog, SID map, tiny random SID model), served
as the pyfunc, saved to a folder and loaded in this process."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.common import artifacts
from components.common.serving import ServedCatalog, UserHistory, current_histories, save_servable
from components.common.serving_config import ServingSettings
from tests.evaluate.conftest import EvalInputs, eval_inputs  # noqa: F401 (a fixture, shared)

#: A live item given the SID of another one: a served catalog may hold such pairs.
TWIN = "TWIN-OF-ITEM-0"
#: What the served test model is logged with.
SETTINGS = ServingSettings(device="cpu", max_reasoning_tokens=8, reasoning_token_limit=16, max_history=10)


def served_catalog(inputs: EvalInputs) -> ServedCatalog:
    """The inputs' catalog, its first item retired, plus :data:`TWIN` sharing the second item's SID."""
    catalog = artifacts.read_catalog(inputs.sid_map, inputs.items)
    items = list(catalog.sid_of)
    return ServedCatalog([*items, TWIN], [*(catalog.sid_of[i] for i in items), catalog.sid_of[items[1]]],
                         ["retired", *["active"] * (len(items) - 1), "new"],
                         [*(catalog.title(i) for i in items), "The twin"])


def example(inputs: EvalInputs) -> UserHistory:
    return current_histories(artifacts.read_samples(inputs.samples), SETTINGS.max_history)[0]


@pytest.fixture(scope="session")
def catalog(eval_inputs) -> ServedCatalog:  # noqa: F811
    return served_catalog(eval_inputs)


@pytest.fixture(scope="session")
def servable(eval_inputs, catalog, tmp_path_factory) -> Path:  # noqa: F811
    """The pyfunc saved to a folder (what `mlflow models serve -m PATH` serves)."""
    path = tmp_path_factory.mktemp("servable") / "model"
    return save_servable(path, model_dir=Path(eval_inputs.model), catalog=catalog, settings=SETTINGS,
                         example=example(eval_inputs), metadata={"test": "serving"})


@pytest.fixture(scope="session")
def served(servable):
    """The pyfunc loaded in this process, as ``mlflow.pyfunc.load_model`` gives it."""
    import mlflow

    return mlflow.pyfunc.load_model(str(servable))
