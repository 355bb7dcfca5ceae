"""Typed run configuration: the base class of every config section, the sections shared by all
stages, and the YAML loading / ``--set`` override / validation machinery.

A run profile is one YAML file (``pipeline/configs/*.yaml``). The pipeline validates the whole
profile before any stage runs; each stage then receives only its own section (as JSON) plus a
:class:`~components.common.stage.StageContext`. Stage sections live in their component folder
(``components/<stage>/config.py``); the root model that assembles them is ``pipeline.config``.

Validation is strict: unknown keys, wrong types (``"3"`` for an int) and impossible values are
errors that name the dotted key, e.g. ``ingest.preprocess.k_core: must be >= 1 (got 0)``.

Secrets never enter a profile: a key named like a credential (``api_key``, ``token``,
``password``, ``secret`` ...) holding a literal value is refused wherever it is, free-form
passthroughs (``teacher.extra_params``, ``trainer_args``) included, because a profile is logged
to MLflow as params and compiled into the pipeline IR (:func:`check_no_secrets`). Keys come from
environment variables, set from Kubernetes Secrets on a cluster (``kubernetes.secrets``).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from components.common.errors import ExpectedError

__all__ = [
    "ConfigError",
    "Section",
    "CpuKernels",
    "RunSection",
    "ResourceSpec",
    "Toleration",
    "ImagesConfig",
    "TrackingConfig",
    "StorageConfig",
    "SecretEnv",
    "KubernetesConfig",
    "load_yaml",
    "apply_overrides",
    "parse_section",
    "parse_section_json",
    "config_hash",
    "check_no_secrets",
    "check_profile_sections",
    "SHARED_SECTIONS",
    "STAGE_SECTIONS",
]

#: Top-level sections of a run profile that every stage image knows (their classes live here).
SHARED_SECTIONS: tuple[str, ...] = ("run", "resources", "images", "tracking", "storage", "kubernetes")
#: The stages' sections (``Stage.config_key``). A stage image holds only its own stage's config
#: class, so its CLI checks the other sections' names against this list; ``pipeline.config``
#: builds ``RunConfig`` from the declarations and a test keeps the two equal.
STAGE_SECTIONS: tuple[str, ...] = ("retrain", "ingest", "sid_quantize", "baselines", "teacher_corpus", "align_sft",
                                   "reason_sft", "grpo", "evaluate", "recommend")


class ConfigError(ExpectedError, ValueError):
    """A profile, override or section is invalid. The message names every offending key."""

    exit_code = 2


class Section(BaseModel):
    """Base of every config section: strict types, unknown keys rejected, documented fields.

    Field documentation is the docstring under each field (shown by ``sidreasoner validate``
    and in the JSON schema).
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_assignment=True,
        validate_default=True,
        use_attribute_docstrings=True,
        frozen=False,
    )


CpuKernels = Literal["native", "reproducible"]


class RunSection(Section):
    """Identity, seed and CPU kernels of a run."""

    name: str = Field("sidreasoner", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    """Run/pipeline name: lowercase letters, digits and dashes (a Kubernetes-safe name)."""
    seed: int = 42
    """Seed for every random choice of every stage."""
    cpu_kernels: CpuKernels = "native"
    """CPU kernels of every stage's torch: ``native``, the host's fastest; ``reproducible``, the
    same bits from a seeded run on any x86-64 CPU with AVX2 and any number of cores (two threads),
    the demo's alignment ~10% slower (components/common/cpu_kernels.py)."""


class Toleration(Section):
    """A Kubernetes toleration for the task's pod."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|K|M|G|T|Ki|Mi|Gi|Ti)?$")


class ResourceSpec(Section):
    """Compute requested by one pipeline task on Kubernetes (ignored by local runs)."""

    cpu_request: str = "1"
    """CPU request, a Kubernetes quantity ("500m", "4")."""
    cpu_limit: str | None = None
    """CPU limit; unset means no limit."""
    memory_request: str = "2G"
    """Memory request ("16G", "512Mi")."""
    memory_limit: str | None = None
    """Memory limit; unset means no limit."""
    gpus: int = Field(0, ge=0, le=16)
    """GPUs for the task (the kfp accelerator limit)."""
    accelerator_type: str = "nvidia.com/gpu"
    """Extended-resource name of the accelerator."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pod must match, e.g. {cloud.google.com/gke-accelerator: nvidia-h100-80gb}."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations, e.g. for the taint of a GPU node pool."""
    shm_size: str | None = None
    """Size of an in-memory /dev/shm (needed by NCCL and dataloader workers on GPU nodes)."""
    retries: int = Field(1, ge=0, le=10)
    """How many times KFP retries the task after a failure (preemption, transient errors)."""
    retry_backoff: str = "60s"
    """Initial back-off between retries (doubles each time)."""
    caching: bool = False
    """KFP task caching. Every task receives the pipeline run id (MLflow lineage), so a cache hit
    only happens within one run (KFP retries); cross-run reuse comes from the stages' own
    content-addressed caches (embeddings, teacher responses, checkpoints)."""

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size", mode="before")
    @classmethod
    def _quantity(cls, value: Any) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # `cpu_request: 4` in YAML is a number; Kubernetes takes it as "4"
        if value is not None and not _QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity such as '4', '500m' or '16G'")
        return value


class ImagesConfig(Section):
    """Container images of the stages; compile writes exactly these names into the IR."""

    registry: str = "localhost/sidreasoner"
    """Registry and repository prefix, e.g. us-docker.pkg.dev/my-project/sidreasoner."""
    tag: str = "dev"
    """Image tag; `make images` uses the git commit."""
    overrides: dict[str, str] = Field(default_factory=dict)
    """Full image reference per stage, replacing registry/stage:tag for that stage."""

    def for_stage(self, stage: str) -> str:
        return self.overrides.get(stage, f"{self.registry}/{stage.replace('_', '-')}:{self.tag}")


class TrackingConfig(Section):
    """MLflow tracking: one parent run per pipeline run, one nested run per stage."""

    uri: str | None = None
    """Tracking URI (http://mlflow.mlflow:5000 on a cluster). Unset: a sqlite store in the
    local run folder."""
    experiment: str = "sidreasoner"
    """MLflow experiment name."""
    artifact_location: str | None = None
    """Artifact root when the experiment is created (gs://... on a cluster; local runs use the
    run folder)."""


class StorageConfig(Section):
    """Where artifacts and caches live (local paths or gs:// URIs)."""

    pipeline_root: str = "gs://sidreasoner-artifacts/pipeline-root"
    """KFP pipeline root for compiled runs (local runs use the run folder)."""
    cache_uri: str = "build/cache"
    """Content-addressed caches shared across runs (embeddings, teacher responses)."""
    gcs_retry_deadline_s: float | None = Field(None, gt=0)
    """How long a failing GCS call is retried (back-off between tries) before the stage fails
    naming the URI; null: the ``SIDREASONER_GCS_RETRY_DEADLINE`` environment variable, else 300."""
    gcs_timeout_s: float | None = Field(None, gt=0)
    """How long one GCS request may take (a dead connection is noticed after this); null: the
    ``SIDREASONER_GCS_TIMEOUT`` environment variable, else 60."""


class SecretEnv(Section):
    """A Kubernetes Secret exposed to some stages as environment variables (names only)."""

    secret_name: str
    """Name of the Kubernetes Secret."""
    env: dict[str, str]
    """Environment variable name -> key inside the Secret."""
    stages: list[str]
    """Stages whose pods receive these variables."""


class KubernetesConfig(Section):
    """Kubernetes platform settings applied to every task (through kfp-kubernetes)."""

    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = None
    """Service account of the run (Workload Identity for GCS); used by submit/schedule."""
    secrets: list[SecretEnv] = Field(default_factory=list)
    """Secrets mounted as environment variables (values never appear in config or IR)."""
    pod_labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels on every pod (each pod also gets sidreasoner/stage=<stage>)."""


# ----------------------------------------------------------------------------------------------
# Loading, overrides and error formatting
# ----------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML loader that also reads ``1e-3`` as a float (YAML 1.1 would give a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML profile into a dict; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def parse_value(text: str) -> Any:
    """Parse one ``--set`` value the way YAML would (``3`` -> int, ``[a, b]`` -> list)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (a copy is returned)."""
    result = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        parts = key.strip().split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {item!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(raw)
    return result


S = TypeVar("S", bound=Section)


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (sub)model addressed by ``loc``, for did-you-mean hints."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
        # unwrap Optional[...] / X | None
        args = [a for a in getattr(current, "__args__", ()) if a is not type(None)]
        if len(args) == 1:
            current = args[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str) -> str:
    return format_errors(exc.errors(), model, prefix)


def format_errors(errors: list[Any], model: type[BaseModel], prefix: str) -> str:
    """pydantic's errors of ``model`` as one message naming each dotted key under ``prefix``."""
    lines = []
    for err in errors:
        loc = tuple(err["loc"])
        key = ".".join([prefix, *map(str, loc)] if prefix else map(str, loc))
        if err["type"] == "extra_forbidden":
            known = _field_names(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"{key}: unknown key{hint}")
        elif err["type"] == "value_error":  # our own validators already say what they got
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {message}" if key else message)  # a whole-model check names its keys
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{key}: {err['msg']}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_section(model: type[S], data: Any, prefix: str = "") -> S:
    """Validate ``data`` as ``model``; a :class:`ConfigError` names each bad key under ``prefix``."""
    check_no_secrets(data, prefix)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, prefix)) from None


def parse_section_json(model: type[S], text: str, prefix: str = "") -> S:
    """Like :func:`parse_section` for a JSON document (dates and enums arrive as strings)."""
    try:
        check_no_secrets(json.loads(text), prefix)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{prefix or 'config'}: not a JSON document ({exc})") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, prefix)) from None


def config_hash(section: BaseModel) -> str:
    """Stable short digest of a validated config (tags the MLflow run; keys caches)."""
    canonical = json.dumps(section.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Secrets and section names
# ----------------------------------------------------------------------------------------------

#: A key named like a credential: the last word of its name is one of these.
_SECRET_KEY = re.compile(
    r"(?:^|[_\-.])(?:api[_\-]?key|apikey|access[_\-]?key|secret[_\-]?key|private[_\-]?key|client[_\-]?secret|"
    r"secret|token|password|passwd|pwd|credentials?)$", re.IGNORECASE)
#: Keys whose values are names by contract (``env: {TEACHER_API_KEY: api-key}``), not secrets.
_NAMES_ONLY = ("kubernetes.secrets",)


def check_no_secrets(data: Any, prefix: str = "") -> None:
    """Refuse a literal value (text or number) under a key named like a credential, anywhere in
    ``data``; the :class:`ConfigError` names each such key (never its value)."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if path in _NAMES_ONLY:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if (_SECRET_KEY.search(str(key)) and not isinstance(value, bool)
                        and isinstance(value, (str, int, float)) and str(value).strip()):
                    found.append(where)
                walk(value, where)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}.{i}" if path else str(i))

    walk(data, prefix)
    if found:
        raise ConfigError(
            "invalid configuration:\n  " + "\n  ".join(
                f"{key}: looks like a secret (a literal value under a credential's name); a profile is logged "
                "to MLflow and compiled into the pipeline IR, so put the value in an environment variable "
                "instead (teacher_corpus.teacher.api_key_env names the teacher's), set from a Kubernetes "
                "Secret on a cluster (kubernetes.secrets)" for key in found))


def check_profile_sections(data: dict[str, Any], known: tuple[str, ...]) -> None:
    """Refuse top-level keys that are no section of ``known``, with a did-you-mean."""
    lines = []
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            lines.append(f"{key}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
