"""The stage declarations are the one source of each stage's contract: the generated kfp
component, the CLI, the run profile's section and the DAG's edges all follow them."""

# no `from __future__ import annotations`: kfp reads the component functions' real annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.common.config import ConfigError
from pipeline.config import DECLARATIONS, RunConfig, load_config
from pipeline.dag import build_component

REPO = Path(__file__).resolve().parents[2]
IMAGE = "registry.example/sidreasoner/stage:abc"


@pytest.mark.parametrize("name", list(DECLARATIONS))
def test_component_has_the_declared_artifacts(name):
    stage = DECLARATIONS[name]
    spec = build_component(stage, IMAGE).component_spec
    inputs = {k: v.type for k, v in spec.inputs.items()}
    assert {k: inputs.pop(k) for k in ("config", "context", "run_key", "pipeline_job_id")} == dict.fromkeys(
        ("config", "context", "run_key", "pipeline_job_id"), "String")
    assert inputs == {n: f"system.{s.kind.kfp_type}@0.0.1" for n, s in stage.inputs.items()}
    assert {n for n in stage.inputs if spec.inputs[n].optional} == {n for n, s in stage.inputs.items() if s.optional}
    assert {k: v.type for k, v in spec.outputs.items()} == {
        n: f"system.{kind.kfp_type}@0.0.1" for n, kind in stage.outputs.items()}
    assert spec.implementation.container.image == IMAGE


@pytest.mark.parametrize("name", list(DECLARATIONS))
def test_every_input_names_a_producer_declared_before_it(name):
    order = list(DECLARATIONS)
    for input_name, spec in DECLARATIONS[name].inputs.items():
        producer, output = spec.source.split(".")
        assert order.index(producer) < order.index(name), (input_name, spec.source)
        assert DECLARATIONS[producer].outputs[output] == spec.kind, (input_name, spec.source)


@pytest.mark.parametrize("name", list(DECLARATIONS))
def test_cli_help_lists_the_declared_inputs(name):
    result = subprocess.run([sys.executable, "-m", f"components.{name}", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=True)
    for input_name in DECLARATIONS[name].inputs:
        assert f"--{input_name.replace('_', '-')} URI" in result.stdout
    assert DECLARATIONS[name].config_key in result.stdout


def test_run_config_has_one_section_per_declared_stage():
    sections = {stage.config_key for stage in DECLARATIONS.values()}
    assert sections <= set(RunConfig.model_fields)
    assert set(RunConfig.model_fields["resources"].annotation.model_fields) == set(DECLARATIONS)


def test_a_run_wiring_an_input_whose_producer_is_off_is_refused(monkeypatch):
    """A declaration whose optional input outlives its producer's switch fails at validation."""
    import dataclasses

    evaluate = DECLARATIONS["evaluate"]
    always = dataclasses.replace(evaluate.inputs["rankings"], when=lambda cfg: True)
    monkeypatch.setitem(DECLARATIONS, "evaluate", dataclasses.replace(
        evaluate, inputs={**evaluate.inputs, "rankings": always}))
    assert load_config("demo")[0].wired_inputs("evaluate")["rankings"] is always
    with pytest.raises(ConfigError, match=r"evaluate: its input 'rankings' comes from baselines.rankings, but stage "
                                          r"baselines does not run before it"):
        load_config("demo", ["baselines.models=[]"])
