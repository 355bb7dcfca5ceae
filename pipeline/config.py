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
from components.ingest.config import IngestConfig
from components.sid_quantize.config import BUILTIN_MINILM, SidQuantizeConfig

CONFIG_DIR = Path(__file__).parent / "configs"

#: Stages in DAG order. A stage's name is also its config section and resources key.
STAGES: tuple[str, ...] = ("ingest", "sid_quantize")


class Resources(Section):
    """Kubernetes resources per stage."""

    ingest: ResourceSpec = Field(default_factory=lambda: ResourceSpec(cpu_request="2", memory_request="8G"))
    sid_quantize: ResourceSpec = Field(default_factory=lambda: ResourceSpec(cpu_request="4", memory_request="16G"))
    """The paper's encoder (Qwen3-Embedding-4B) wants a GPU: set gpus and a node selector."""


class RunConfig(Section):
    """A whole run profile."""

    run: RunSection = Field(default_factory=RunSection)
    ingest: IngestConfig
    sid_quantize: SidQuantizeConfig = Field(default_factory=SidQuantizeConfig)
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
        return self

    def section(self, stage: str) -> Section:
        return getattr(self, stage)

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
                           ("sid_quantize.incremental.previous_codebooks", sid.incremental.previous_codebooks)):
            if value is not None and not storage.is_gcs(value):
                problems.append(f"{key} must be a gs:// URI on a cluster (got {value!r})")
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
