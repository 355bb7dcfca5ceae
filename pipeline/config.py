"""The root run configuration: every stage's section plus the shared ones.

``load_config`` reads a profile from ``pipeline/configs/``, applies ``--set`` overrides and
validates the whole thing (each stage section, then cross-section rules) before any stage
runs. ``cluster_problems`` lists what would break on a Kubeflow cluster (local paths, a local
MLflow store); ``submit`` and ``schedule`` refuse such a config, ``compile`` warns.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, create_model, model_validator

from components.common import storage
from components.common.config import (
    ConfigError,
    ImagesConfig,
    KubernetesConfig,
    ResourceSpec,
    RunSection,
    Section,
    StorageConfig,
    TrackingConfig,
    apply_overrides,
    check_no_secrets,
    format_errors,
    load_yaml,
    parse_section,
)
from components.common.stage import Input, Stage
from components.common.training.launch import check_hardware
from components.common.training.settings import TrainerSettings
from components.sid_quantize.config import BUILTIN_MINILM

CONFIG_DIR = Path(__file__).parent / "configs"

#: The pipeline's stages in DAG order. Each package declares its stage (``STAGE`` in its
#: ``__init__.py``): config section, inputs and where they come from, outputs, image, resources.
#: Adding a stage is one name here.
STAGE_PACKAGES: tuple[str, ...] = ("previous_model", "ingest", "sid_quantize", "baselines", "teacher_corpus",
                                   "align_sft", "reason_sft", "grpo", "evaluate", "promote", "recommend")
DECLARATIONS: dict[str, Stage] = {
    name: importlib.import_module(f"components.{name}").STAGE for name in STAGE_PACKAGES}
STAGES: tuple[str, ...] = tuple(DECLARATIONS)
assert all(stage.name == name for name, stage in DECLARATIONS.items()), "a stage's name is its package's"


def _section_field(section: type[Section], description: str) -> tuple[type[Section], Any]:
    """A profile section: required when its class has required fields, else defaulted."""
    if any(field.is_required() for field in section.model_fields.values()):
        return section, Field(description=description)
    return section, Field(default_factory=section, description=description)


Resources = create_model(
    "Resources", __base__=Section, __doc__="Kubernetes resources per stage (defaults: each stage's declaration).",
    **{name: (ResourceSpec, Field(default_factory=stage.resources.model_copy, description=stage.description))
       for name, stage in DECLARATIONS.items()})


class _RunConfig(Section):
    """A whole run profile: one section per stage (``RunConfig`` adds them, from the declarations)
    and the shared ones."""

    @model_validator(mode="after")
    def _cross_checks(self) -> _RunConfig:
        for i, secret in enumerate(self.kubernetes.secrets):
            unknown = set(secret.stages) - set(STAGES)
            if unknown:
                raise ValueError(f"kubernetes.secrets.{i}.stages: unknown stage(s) {sorted(unknown)}; "
                                 f"stages are {list(STAGES)}")
        unknown = set(self.images.overrides) - set(STAGES)
        if unknown:
            raise ValueError(f"images.overrides: unknown stage(s) {sorted(unknown)}")
        if self.retrain.enabled:
            self._check_retrain()
        if self.baselines.models and self.baselines.top_k < self.evaluate.beam_width:
            raise ValueError(f"baselines.top_k {self.baselines.top_k} is below evaluate.beam_width "
                             f"{self.evaluate.beam_width}: the baselines' lists must be as long as the model's")
        self._check_wiring()
        return self

    def _check_wiring(self) -> None:
        """Every input this run wires comes from an earlier stage this run has."""
        stages = self.dag_stages()
        for position, name in enumerate(stages):
            for input_name, spec in self.wired_inputs(name).items():
                producer, output = spec.source.split(".", 1)
                if producer not in stages[:position]:
                    raise ValueError(f"{name}: its input {input_name!r} comes from {spec.source}, but stage "
                                     f"{producer} does not run before it in this run (check the settings "
                                     "enabling it)")
                if output not in DECLARATIONS[producer].outputs:
                    raise ValueError(f"{name}: its input {input_name!r} names {spec.source}, which {producer} "
                                     f"does not output (outputs: {list(DECLARATIONS[producer].outputs)})")

    def _check_retrain(self) -> None:
        retrain, evaluate = self.retrain, self.evaluate
        if self.tracking.uri is None:
            raise ValueError("retrain.registered_model: scheduled runs find each other through the MLflow "
                             "registry, so tracking.uri must name a store they share (not the per-run default)")
        if retrain.incremental_sids and self.sid_quantize.incremental.enabled:
            raise ValueError("sid_quantize.incremental: set by hand while retrain.incremental_sids takes the "
                             "previous SIDs from the production model; use one of them")
        if retrain.model_name != evaluate.model_name:
            raise ValueError(f"retrain.model_name {retrain.model_name!r} must equal evaluate.model_name "
                             f"{evaluate.model_name!r}")
        if retrain.mode not in evaluate.modes:
            raise ValueError(f"retrain.mode {retrain.mode!r} is not evaluated (evaluate.modes {evaluate.modes})")
        if retrain.k not in evaluate.effective_ks():
            raise ValueError(f"retrain.k {retrain.k} is not reported (evaluate reports {evaluate.effective_ks()})")
        splits = [*evaluate.splits, *(["all"] if len(evaluate.splits) > 1 else [])]
        if retrain.split not in splits:
            raise ValueError(f"retrain.split {retrain.split!r} is not reported (evaluate reports {splits})")

    def dag_stages(self) -> tuple[str, ...]:
        """The stages of this config's DAG, in order (e.g. retraining adds previous_model and promote)."""
        return tuple(name for name, stage in DECLARATIONS.items() if stage.enabled(self))

    def wired_inputs(self, stage: str) -> dict[str, Input]:
        """The inputs of ``stage`` this run wires (its optional ones only when their ``when`` holds)."""
        return {name: spec for name, spec in DECLARATIONS[stage].inputs.items()
                if spec.when is None or spec.when(self)}

    def section(self, stage: str) -> Section:
        return getattr(self, DECLARATIONS[stage].config_key)

    def check_hardware(self, gpus: dict[str, int]) -> None:
        """Refuse settings the given GPUs per stage cannot run (bf16 or several processes
        without a GPU, a CUDA-only evaluation engine on a CPU) before any stage starts."""
        for stage in STAGES:
            settings = self.section(stage)
            if isinstance(settings, TrainerSettings):
                check_hardware(settings, stage, gpus[stage])
        if gpus["evaluate"] == 0 and (self.evaluate.device == "cuda" or self.evaluate.engine == "vllm"):
            raise ConfigError("evaluate.device/engine: CUDA decoding was requested but the evaluate step "
                              "has no GPU; use device auto/cpu and engine transformers")
        if gpus["evaluate"] and self.evaluate.shards > gpus["evaluate"]:
            raise ConfigError(f"evaluate.shards: {self.evaluate.shards} shards need as many GPUs, the step "
                              f"has {gpus['evaluate']} (resources.evaluate.gpus)")

    def requested_gpus(self) -> dict[str, int]:
        """GPUs each stage's pod requests on a cluster."""
        return {stage: getattr(self.resources, stage).gpus for stage in STAGES}

    def cluster_problems(self) -> list[str]:
        """What would not work inside a Kubeflow pod (local paths, a local MLflow store)."""
        problems = []
        if not self.tracking.uri or not self.tracking.uri.startswith(("http://", "https://", "databricks")):
            problems.append(f"tracking.uri must be an MLflow server URL on a cluster (got {self.tracking.uri!r})")
        sid = self.sid_quantize
        encoder = None if sid.encoder.model == BUILTIN_MINILM else sid.encoder.model  # the bundled one is in the image
        for key, value in (("storage.pipeline_root", self.storage.pipeline_root),
                           ("storage.cache_uri", self.storage.cache_uri),
                           ("ingest.source", self.ingest.source),
                           ("sid_quantize.encoder.model", encoder),
                           ("sid_quantize.incremental.previous_sid_map", sid.incremental.previous_sid_map),
                           ("sid_quantize.incremental.previous_codebooks", sid.incremental.previous_codebooks),
                           ("teacher_corpus.cache_uri", self.teacher_corpus.cache_uri),
                           ("align_sft.backbone.uri", self.align_sft.backbone.uri)):
            if value is not None and not storage.is_gcs(value):
                problems.append(f"{key} must be a gs:// URI on a cluster (got {value!r})")
        teacher = self.teacher_corpus.teacher
        if teacher.backend != "offline":
            exposed = {env for secret in self.kubernetes.secrets if "teacher_corpus" in secret.stages
                       for env in secret.env}
            if teacher.api_key_env and teacher.api_key_env not in exposed:
                problems.append(f"teacher_corpus.teacher.api_key_env {teacher.api_key_env} is not set from any "
                                "kubernetes.secrets entry for the teacher_corpus stage")
        return problems


RunConfig = create_model(
    "RunConfig", __base__=_RunConfig, __doc__=_RunConfig.__doc__,
    run=(RunSection, Field(default_factory=RunSection, description="identity, seed and CPU kernels of the run")),
    **{stage.config_key: _section_field(stage.config, stage.description) for stage in DECLARATIONS.values()},
    resources=(Resources, Field(default_factory=Resources, description=Resources.__doc__)),
    images=(ImagesConfig, Field(default_factory=ImagesConfig, description=ImagesConfig.__doc__)),
    tracking=(TrackingConfig, Field(default_factory=TrackingConfig, description=TrackingConfig.__doc__)),
    storage=(StorageConfig, Field(default_factory=StorageConfig, description=StorageConfig.__doc__)),
    kubernetes=(KubernetesConfig, Field(default_factory=KubernetesConfig, description=KubernetesConfig.__doc__)),
)


def resolve_profile(config: str) -> Path:
    """A profile path, or the name of one in ``pipeline/configs`` (``demo`` -> demo.yaml)."""
    path = Path(config)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / f"{config}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config not found: {config} (profiles in {CONFIG_DIR}: {known})")


def load_config(config: str, overrides: list[str] | None = None) -> tuple[RunConfig, str]:
    """Load and validate a profile -> (config, profile name)."""
    path = resolve_profile(config)
    data = apply_overrides(load_yaml(path), overrides or [])
    return parse_section(RunConfig, data), path.stem


def validate_profile(data: dict[str, Any], section: str) -> None:
    """Validate a whole profile for the CLI of the stage whose section is ``section``, as
    ``sidreasoner validate`` does: every section and cross-section rule, each error naming its
    key. A required section of another stage may be absent (a profile written for one stage);
    then the cross-section rules, which need every section, are not checked.

    Stage CLIs find this through the ``sidreasoner.profile`` entry point, which only the full
    package declares (a stage image holds neither ``pipeline/`` nor the other stages' configs)."""
    check_no_secrets(data)
    try:
        RunConfig.model_validate(data)
    except ValidationError as exc:
        errors = [err for err in exc.errors()
                  if not (err["type"] == "missing" and len(err["loc"]) == 1 and err["loc"][0] != section)]
        if errors:
            raise ConfigError(format_errors(errors, RunConfig, "")) from None
