"""The root run configuration: every stage's section plus the shared ones.

``load_config`` reads a profile from ``pipeline/configs/``, applies ``--set`` overrides and
validates the whole thing (each stage section, then cross-section rules) before any stage
runs. ``cluster_problems`` lists what would break on a Kubeflow cluster (local paths, a local
MLflow store); ``submit`` and ``schedule`` refuse such a config, ``compile`` warns.
"""

from __future__ import annotations

from pathlib import Path
from pydantic import Field, model_validator

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
    load_yaml,
    parse_section,
)
from components.align_sft.config import AlignSFTConfig
from components.common.registry import RetrainConfig
from components.common.training import TrainerSettings, check_hardware
from components.evaluate.config import EvaluateConfig
from components.grpo.config import GRPOStageConfig
from components.ingest.config import IngestConfig
from components.reason_sft.config import ReasonSFTConfig
from components.sid_quantize.config import BUILTIN_MINILM, SidQuantizeConfig
from components.teacher_corpus.config import TeacherCorpusConfig

CONFIG_DIR = Path(__file__).parent / "configs"

#: Stages in DAG order. A stage's name is also its config section and resources key.
STAGES: tuple[str, ...] = ("previous_model", "ingest", "sid_quantize", "teacher_corpus", "align_sft",
                           "reason_sft", "grpo", "evaluate", "promote")
#: Stages that exist only when scheduled retraining is on (``retrain.registered_model`` set).
RETRAIN_STAGES: tuple[str, ...] = ("previous_model", "promote")
#: Stages whose config section is not named after them.
SECTIONS: dict[str, str] = {"previous_model": "retrain", "promote": "retrain"}
#: Stages that train a model (their settings are checked against the GPUs they will get).
TRAINING_STAGES: tuple[str, ...] = ("align_sft", "reason_sft", "grpo")


def _cpu(cpu: str, memory: str):
    return lambda: ResourceSpec(cpu_request=cpu, memory_request=memory)


class Resources(Section):
    """Kubernetes resources per stage."""

    previous_model: ResourceSpec = Field(default_factory=_cpu("500m", "1G"))
    """Reads the MLflow registry."""
    ingest: ResourceSpec = Field(default_factory=_cpu("2", "8G"))
    sid_quantize: ResourceSpec = Field(default_factory=_cpu("4", "16G"))
    """The paper's encoder (Qwen3-Embedding-4B) wants a GPU: set gpus and a node selector."""
    teacher_corpus: ResourceSpec = Field(default_factory=_cpu("2", "8G"))
    """Network-bound (teacher calls); no GPU."""
    align_sft: ResourceSpec = Field(default_factory=_cpu("2", "8G"))
    """Paper scale: 4 GPUs (RECIPE.md section 8)."""
    reason_sft: ResourceSpec = Field(default_factory=_cpu("2", "8G"))
    grpo: ResourceSpec = Field(default_factory=_cpu("2", "8G"))
    evaluate: ResourceSpec = Field(default_factory=_cpu("2", "8G"))
    """Paper scale: 2 GPUs (the test set sharded)."""
    promote: ResourceSpec = Field(default_factory=_cpu("500m", "1G"))
    """Registers a model version in MLflow."""


class RunConfig(Section):
    """A whole run profile."""

    run: RunSection = Field(default_factory=RunSection)
    ingest: IngestConfig
    sid_quantize: SidQuantizeConfig = Field(default_factory=SidQuantizeConfig)
    teacher_corpus: TeacherCorpusConfig = Field(default_factory=TeacherCorpusConfig)
    align_sft: AlignSFTConfig
    reason_sft: ReasonSFTConfig = Field(default_factory=ReasonSFTConfig)
    grpo: GRPOStageConfig = Field(default_factory=GRPOStageConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    resources: Resources = Field(default_factory=Resources)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
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
        return self

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
        """The stages of this config's DAG, in order (retraining adds previous_model and promote)."""
        return tuple(s for s in STAGES if self.retrain.enabled or s not in RETRAIN_STAGES)

    def section(self, stage: str) -> Section:
        return getattr(self, SECTIONS.get(stage, stage))

    def check_hardware(self, gpus: dict[str, int]) -> None:
        """Refuse settings the given GPUs per stage cannot run (bf16 or several processes
        without a GPU, a CUDA-only evaluation engine on a CPU) before any stage starts."""
        for stage in TRAINING_STAGES:
            settings: TrainerSettings = self.section(stage)
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
