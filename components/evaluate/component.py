"""The evaluate stage as a kfp component (a thin wrapper over ``components.evaluate.stage``)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output


def evaluate(config: str, context: str, run_key: str, pipeline_job_id: str,
             model: Input[Model], sid_map: Input[Dataset], items: Input[Dataset], samples: Input[Dataset],
             metrics: Output[Dataset], predictions: Output[Dataset], report: Output[HTML],
             stats: Output[Artifact], previous: Optional[Input[Artifact]] = None):
    """Score the model with trie-constrained beam search beside popularity and SASRec."""
    from components.evaluate.stage import STAGE

    STAGE.from_kfp(config, context, run_key or pipeline_job_id, model=model, sid_map=sid_map, items=items,
                   samples=samples, metrics=metrics, predictions=predictions, report=report, stats=stats,
                   previous=previous)


def build(image: str):
    """The component, running in ``image`` (which has this package installed)."""
    return dsl.component(evaluate, base_image=image, install_kfp_package=False)
