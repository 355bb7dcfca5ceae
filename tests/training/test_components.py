"""The kfp components of the training stages: typed artifacts, chained into a pipeline that
compiles with GPU requests (the lead wires them into pipeline/dag.py the same way)."""

# no `from __future__ import annotations`: kfp reads the pipeline function's real annotations

import yaml
from kfp import compiler, dsl

from components.align_sft import component as align_component
from components.grpo import component as grpo_component
from components.reason_sft import component as reason_component

IMAGE = "registry.example/sidreasoner/train:abc"


def test_components_declare_the_stage_artifacts():
    specs = {name: module.build(IMAGE).component_spec for name, module in
             (("align_sft", align_component), ("reason_sft", reason_component), ("grpo", grpo_component))}
    inputs = {name: {k: v.type for k, v in spec.inputs.items()} for name, spec in specs.items()}
    outputs = {name: {k: v.type for k, v in spec.outputs.items()} for name, spec in specs.items()}
    assert inputs["align_sft"] == {"config": "String", "context": "String", "run_key": "String",
                                   "pipeline_job_id": "String", "items": "system.Dataset@0.0.1",
                                   "samples": "system.Dataset@0.0.1", "sid_map": "system.Dataset@0.0.1",
                                   "corpus": "system.Dataset@0.0.1", "previous": "system.Artifact@0.0.1"}
    # the production model of a scheduled retraining run: absent on a first run
    assert specs["align_sft"].inputs["previous"].optional
    assert inputs["reason_sft"]["sft_model"] == "system.Model@0.0.1"
    assert inputs["grpo"]["reasoning_model"] == "system.Model@0.0.1"
    for name in specs:
        assert outputs[name] == {"model": "system.Model@0.0.1", "stats": "system.Artifact@0.0.1"}


def test_training_chain_compiles_with_gpu_requests(tmp_path):
    align_op, reason_op, grpo_op = (m.build(IMAGE) for m in (align_component, reason_component, grpo_component))

    @dsl.pipeline(name="training-chain")
    def chain(run_key: str = ""):
        common = {"context": "{}", "run_key": run_key, "pipeline_job_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        data = {name: dsl.importer(artifact_uri=f"gs://b/{name}.parquet", artifact_class=dsl.Dataset).output
                for name in ("items", "samples", "sid_map", "corpus", "reasoning")}
        align = align_op(config="{}", items=data["items"], samples=data["samples"], sid_map=data["sid_map"],
                         corpus=data["corpus"], **common)
        reason = reason_op(config="{}", sft_model=align.outputs["model"], reasoning=data["reasoning"],
                           sid_map=data["sid_map"], **common)
        grpo = grpo_op(config="{}", reasoning_model=reason.outputs["model"], reasoning=data["reasoning"],
                       sid_map=data["sid_map"], **common)
        for task in (align, reason, grpo):
            task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(4)

    path = tmp_path / "chain.yaml"
    compiler.Compiler().compile(chain, str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    executors = spec["deploymentSpec"]["executors"]
    trainers = [e["container"] for name, e in executors.items() if not name.startswith("exec-importer")]
    assert len(trainers) == 3 and all(c["image"] == IMAGE for c in trainers)
    assert all(c["resources"]["accelerator"]["resourceCount"] == "4" for c in trainers)
