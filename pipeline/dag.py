"""The one kfp v2 pipeline, derived from the stage declarations and the run config.

``build_pipeline`` returns the ``@dsl.pipeline`` function for a validated config: one task per
stage the config enables (``Stage.enabled``), in declaration order, each input wired from the
``<stage>.<output>`` its declaration names (optional inputs only when their ``when`` holds). The
same function is compiled to IR for Kubeflow (``for_cluster=True``: resources, retries, caching
and Kubernetes platform settings on every task) and run by ``kfp.local`` (``for_cluster=False``:
those settings have no local meaning and the local runner would only warn about them).

Every stage output is also a pipeline output named ``<stage>_<output>`` so a local run can
report all artifact URIs (``run.json``) and the IR documents them.
"""

import linecache
from typing import Any, NamedTuple, Optional

from kfp import dsl, kubernetes

from components.common.stage import Stage, StageContext
from pipeline.config import DECLARATIONS, RunConfig

#: kfp artifact class of each ``ArtifactKind.kfp_type``.
KFP_TYPES: dict[str, type] = {"Dataset": dsl.Dataset, "Model": dsl.Model, "Artifact": dsl.Artifact, "HTML": dsl.HTML}

#: Environment of every task (see STACK.md: litellm's network fetch deadlocks offline imports).
TASK_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def output_name(stage: str, output: str) -> str:
    return f"{stage}_{output}"


def component_source(stage: Stage) -> str:
    """Source of the stage's kfp component function: typed artifacts from the declaration, and a
    body handing them to ``STAGE.from_kfp`` inside the stage's image."""
    required = [n for n, spec in stage.inputs.items() if not spec.optional]
    optional = [n for n, spec in stage.inputs.items() if spec.optional]
    params = ["config: str", "context: str", "run_key: str", "pipeline_job_id: str",
              *(f"{n}: Input[{stage.inputs[n].kind.kfp_type}]" for n in required),
              *(f"{n}: Output[{kind.kfp_type}]" for n, kind in stage.outputs.items()),
              *(f"{n}: Optional[Input[{stage.inputs[n].kind.kfp_type}]] = None" for n in optional)]
    passed = ", ".join(f"{n}={n}" for n in [*required, *stage.outputs, *optional])
    description = stage.description.replace('"""', "'''")
    return (f"def {stage.name}({', '.join(params)}):\n"
            f'    """{description}"""\n'
            f"    from components.{stage.name} import STAGE\n\n"
            f"    STAGE.from_kfp(config, context, run_key or pipeline_job_id, {passed})\n")


def build_component(stage: Stage, image: str):
    """The stage's kfp component, running in ``image``.

    kfp turns a Python function into a component by reading its source (``inspect.getsource``)
    and its annotations. The function is generated from the declaration, so its source is
    registered with ``linecache`` under a pseudo file name, where ``inspect`` finds it: no
    per-stage component file repeats what the declaration says."""
    source = component_source(stage)
    filename = f"<sidreasoner component {stage.name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"Input": dsl.Input, "Output": dsl.Output, "Optional": Optional, **KFP_TYPES}
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 (our own source)
    return dsl.component(namespace[stage.name], base_image=image, install_kfp_package=False)


def pipeline_outputs(stages: tuple[str, ...]) -> type:
    """The pipeline's return type: every output of every stage in the DAG."""
    return NamedTuple(  # type: ignore[misc]
        "PipelineOutputs",
        [(output_name(stage, name), KFP_TYPES[kind.kfp_type])
         for stage in stages for name, kind in DECLARATIONS[stage].outputs.items()],
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
    ops = {stage: build_component(DECLARATIONS[stage], cfg.images.for_stage(stage)) for stage in stages}
    PipelineOutputs = pipeline_outputs(stages)

    @dsl.pipeline(
        name=cfg.run.name,
        description="SIDReasoner: semantic IDs, SID-language alignment, reasoning activation, "
                    "GRPO and trie-constrained evaluation.",
        pipeline_root=cfg.storage.pipeline_root if for_cluster else None,
    )
    def sidreasoner(run_key: str = "") -> PipelineOutputs:
        tasks: dict[str, Any] = {}
        for stage in stages:
            inputs = {}
            for name, spec in cfg.wired_inputs(stage).items():
                producer, output = spec.source.split(".", 1)
                inputs[name] = tasks[producer].outputs[output]  # present: RunConfig checked the wiring
            task = ops[stage](config=cfg.section(stage).model_dump_json(), context=context, run_key=run_key,
                              pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **inputs)
            _configure_task(task, stage, cfg, for_cluster)
            tasks[stage] = task
        return PipelineOutputs(**{
            output_name(stage, name): tasks[stage].outputs[name]
            for stage in stages for name in DECLARATIONS[stage].outputs
        })

    return sidreasoner
