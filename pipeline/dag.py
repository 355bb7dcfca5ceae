"""The one kfp v2 pipeline: stages wired through artifacts, settings taken from the run config.

``build_pipeline`` returns the ``@dsl.pipeline`` function for a validated config. The same
function is compiled to IR for Kubeflow (``for_cluster=True``: resources, retries, caching and
Kubernetes platform settings on every task) and run by ``kfp.local`` (``for_cluster=False``:
those settings have no local meaning and the local runner would only warn about them).

Every stage output is also a pipeline output named ``<stage>_<output>`` so a local run can
report all artifact URIs (``run.json``) and the IR documents them.
"""


import importlib
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Model

from components.common.stage import StageContext
from pipeline.config import STAGES, RunConfig

#: Stage -> its outputs and their artifact types, in DAG order.
STAGE_OUTPUTS: dict[str, dict[str, type]] = {
    "previous_model": {"previous": Artifact},
    "ingest": {"items": Dataset, "samples": Dataset, "stats": Artifact},
    "sid_quantize": {"embeddings": Dataset, "sid_map": Dataset, "codebooks": Model, "stats": Artifact},
    "teacher_corpus": {"corpus": Dataset, "reasoning": Dataset, "stats": Artifact},
    "align_sft": {"model": Model, "stats": Artifact},
    "reason_sft": {"model": Model, "stats": Artifact},
    "grpo": {"model": Model, "stats": Artifact},
    "evaluate": {"metrics": Dataset, "predictions": Dataset, "report": HTML, "stats": Artifact},
    "promote": {"decision": Artifact},
}
assert tuple(STAGE_OUTPUTS) == STAGES

#: Environment of every task (see STACK.md: litellm's network fetch deadlocks offline imports).
TASK_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def output_name(stage: str, output: str) -> str:
    return f"{stage}_{output}"


def pipeline_outputs(stages: tuple[str, ...]) -> type:
    """The pipeline's return type: every output of every stage in the DAG."""
    return NamedTuple(  # type: ignore[misc]
        "PipelineOutputs",
        [(output_name(stage, name), kind) for stage in stages for name, kind in STAGE_OUTPUTS[stage].items()],
    )


def _configure_task(task: Any, stage: str, cfg: RunConfig, for_cluster: bool) -> None:
    task.set_display_name(stage)
    if not for_cluster:
        return
    spec = getattr(cfg.resources, stage)
    task.set_cpu_request(spec.cpu_request).set_memory_request(spec.memory_request)
    if spec.cpu_limit:
        task.set_cpu_limit(spec.cpu_limit)
    if spec.memory_limit:
        task.set_memory_limit(spec.memory_limit)
    if spec.gpus:
        task.set_accelerator_type(spec.accelerator_type).set_accelerator_limit(spec.gpus)
    if spec.retries:
        task.set_retry(num_retries=spec.retries, backoff_duration=spec.retry_backoff, backoff_factor=2.0)
    task.set_caching_options(spec.caching)
    for key, value in TASK_ENV.items():
        task.set_env_variable(key, value)
    for label, value in spec.node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for tol in spec.tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
    if spec.shm_size:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=spec.shm_size)
    for secret in cfg.kubernetes.secrets:
        if stage in secret.stages:
            kubernetes.use_secret_as_env(task, secret_name=secret.secret_name, secret_key_to_env={
                key: env for env, key in secret.env.items()})
    kubernetes.set_image_pull_policy(task, cfg.kubernetes.image_pull_policy)
    kubernetes.add_pod_label(task, "sidreasoner/stage", stage)
    for label, value in cfg.kubernetes.pod_labels.items():
        kubernetes.add_pod_label(task, label, value)


def build_pipeline(cfg: RunConfig, ctx: StageContext, *, for_cluster: bool):
    """The pipeline function for ``cfg``; ``ctx`` is the static part of every stage's context."""
    context = ctx.model_dump_json()
    stages = cfg.dag_stages()
    ops = {stage: importlib.import_module(f"components.{stage}.component").build(cfg.images.for_stage(stage))
           for stage in stages}
    PipelineOutputs = pipeline_outputs(stages)
    retrain = cfg.retrain

    def section(stage: str) -> str:
        return cfg.section(stage).model_dump_json()

    @dsl.pipeline(
        name=cfg.run.name,
        description="SIDReasoner: semantic IDs, SID-language alignment, reasoning activation, "
                    "GRPO and trie-constrained evaluation.",
        pipeline_root=cfg.storage.pipeline_root if for_cluster else None,
    )
    def sidreasoner(run_key: str = "") -> PipelineOutputs:
        common = {"context": context, "run_key": run_key, "pipeline_job_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}

        def step(stage: str, **inputs: Any):
            task = ops[stage](config=section(stage), **inputs, **common)
            _configure_task(task, stage, cfg, for_cluster)
            return task

        tasks = {}
        # Scheduled retraining: continue from the production model that MLflow's registry names.
        previous = {}
        if retrain.enabled:
            tasks["previous_model"] = step("previous_model")
            previous = {"previous": tasks["previous_model"].outputs["previous"]}
        # Keeping the production SIDs (sid_quantize) and scoring production on this run's rows
        # (evaluate) both need retrain.incremental_sids.
        previous_sids = previous if retrain.incremental_sids else {}
        ingest = tasks["ingest"] = step("ingest")
        items, samples = ingest.outputs["items"], ingest.outputs["samples"]
        sid = tasks["sid_quantize"] = step("sid_quantize", items=items, **previous_sids)
        sid_map = sid.outputs["sid_map"]
        corpus = tasks["teacher_corpus"] = step("teacher_corpus", items=items, samples=samples, sid_map=sid_map)
        reasoning = corpus.outputs["reasoning"]
        align = tasks["align_sft"] = step("align_sft", items=items, samples=samples, sid_map=sid_map,
                                          corpus=corpus.outputs["corpus"],
                                          **(previous if retrain.warm_start else {}))
        reason = tasks["reason_sft"] = step("reason_sft", sft_model=align.outputs["model"], reasoning=reasoning,
                                            sid_map=sid_map)
        grpo = tasks["grpo"] = step("grpo", reasoning_model=reason.outputs["model"], reasoning=reasoning,
                                    sid_map=sid_map)
        # The production model is scored on this run's rows (it speaks this run's SIDs).
        evaluate = tasks["evaluate"] = step("evaluate", model=grpo.outputs["model"], sid_map=sid_map, items=items,
                                            samples=samples, **previous_sids)
        if retrain.enabled:
            tasks["promote"] = step("promote", metrics=evaluate.outputs["metrics"], model=grpo.outputs["model"],
                                    model_stats=grpo.outputs["stats"], sid_map=sid_map,
                                    codebooks=sid.outputs["codebooks"], **previous)
        return PipelineOutputs(**{
            output_name(stage, name): tasks[stage].outputs[name]
            for stage in stages for name in STAGE_OUTPUTS[stage]
        })

    return sidreasoner
