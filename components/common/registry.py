"""Scheduled retraining through the MLflow model registry.

The production model of a pipeline is the version of the registered model
``retrain.registered_model`` that carries the alias ``retrain.alias``. Its version tags record
what the next run needs: the model folder to warm-start from, the sid_map and codebooks whose SIDs
must be kept, the metric it scored and the pipeline run that made it. A scheduled run therefore
finds "the previous run" through MLflow alone (stage ``previous_model``) and, after evaluation,
registers its own model and moves the alias only if it scores better (stage ``promote``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import Field

from components.common import storage
from components.common.config import Section
from components.common.lineage import _mlflow
from components.common.serving_config import ServingSettings

log = logging.getLogger(__name__)

TAG_MODEL_URI = "sidreasoner.model_uri"
TAG_SID_MAP_URI = "sidreasoner.sid_map_uri"
TAG_CODEBOOKS_URI = "sidreasoner.codebooks_uri"
TAG_METRIC = "sidreasoner.metric"
TAG_METRIC_VALUE = "sidreasoner.metric_value"
TAG_RUN_KEY = "sidreasoner.run_key"
TAG_PROMOTION = "sidreasoner.promotion"
#: The production model's name in evaluate's metrics when a scheduled run scores it on its rows.
PRODUCTION_MODEL = "production"


class RetrainConfig(Section):
    """Scheduled retraining: reuse the production run's SIDs and model, promote only a better one."""

    model_name: str = "sidreasoner"
    """The evaluated model's name in evaluate's metrics (evaluate.model_name)."""
    registered_model: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    """MLflow registered model of this pipeline's production models; null: retraining off (no
    previous_model / promote steps, every run starts fresh)."""
    alias: str = Field("production", pattern=r"^[A-Za-z0-9_-]+$")
    """Alias marking the production version."""
    incremental_sids: bool = True
    """Keep the production run's SIDs (existing items keep theirs, new items get new unique ones,
    removed items are retired), so the token vocabulary does not change."""
    warm_start: bool = True
    """Start alignment SFT from the production model instead of the configured backbone."""
    metric: Literal["hr", "ndcg"] = "ndcg"
    """Metric deciding promotion."""
    k: int = Field(10, ge=1)
    """Cut-off of the metric (must be one evaluate reports)."""
    mode: Literal["thinking", "direct"] = "thinking"
    """Evaluation mode whose score decides (must be one of evaluate.modes)."""
    split: Literal["test", "valid", "all"] = "test"
    """Split whose score decides."""
    min_improvement: float = Field(0.0, ge=0.0)
    """The new model must beat production by more than this (absolute)."""
    serving: ServingSettings = Field(default_factory=ServingSettings)
    """How the promoted model serves (the registered pyfunc's ``model_config``: its decoder and
    request defaults and limits; a server may override them when it loads the model)."""
    check_served_model: bool = True
    """Before registering, load the logged pyfunc back from MLflow and answer its input example
    (transformers on the CPU): a model that cannot serve is never registered. Needs the model's
    memory in the promote step."""

    @property
    def enabled(self) -> bool:
        return self.registered_model is not None

    @property
    def metric_name(self) -> str:
        return f"{self.metric}@{self.k}/{self.mode}/{self.split}"


@dataclass
class PreviousModel:
    """What the ``previous_model`` step found (the ``previous`` artifact, JSON)."""

    found: bool
    reason: str
    registered_model: str | None = None
    version: str | None = None
    model_uri: str | None = None
    sid_map_uri: str | None = None
    codebooks_uri: str | None = None
    metric: str | None = None
    metric_value: float | None = None
    run_key: str | None = None

    def write(self, uri: str) -> str:
        return storage.write_json(uri, asdict(self))

    @classmethod
    def read(cls, uri: str) -> PreviousModel:
        return cls(**storage.read_json(uri))


def continued_from(inputs: Mapping[str, str], otherwise: str) -> PreviousModel | None:
    """The production model a stage continues from: the ``previous`` input, when previous_model
    found one; None (logging ``otherwise``) for a run that is not scheduled or is the first."""
    if "previous" not in inputs:
        return None
    previous = PreviousModel.read(inputs["previous"])
    if not previous.found:
        log.info("no production model yet (%s): %s", previous.reason, otherwise)
        return None
    return previous


def production_version(name: str, alias: str):
    """The registered model version holding ``alias``, or None (no such model or alias)."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    if alias not in (model.aliases or {}):
        return None
    return client.get_model_version_by_alias(name, alias)


def find_previous(cfg: RetrainConfig) -> PreviousModel:
    """Look up the production version and check that what it points at still exists."""
    version = production_version(cfg.registered_model, cfg.alias)
    if version is None:
        return PreviousModel(found=False, registered_model=cfg.registered_model,
                             reason=f"no version of {cfg.registered_model!r} has alias {cfg.alias!r} yet: "
                                    "this run starts fresh")
    tags = version.tags
    missing = [t for t in (TAG_MODEL_URI, TAG_SID_MAP_URI, TAG_CODEBOOKS_URI) if not tags.get(t)]
    if missing:
        raise ValueError(f"{cfg.registered_model} version {version.version} (@{cfg.alias}) lacks tag(s) "
                         f"{missing}: it was not registered by the promote step")
    uris = {t: tags[t] for t in (TAG_MODEL_URI, TAG_SID_MAP_URI, TAG_CODEBOOKS_URI)}
    gone = [uri for uri in uris.values() if not storage.exists(uri)]
    if gone:
        raise FileNotFoundError(f"{cfg.registered_model} version {version.version} (@{cfg.alias}) points at "
                                f"artifacts that no longer exist: {gone}. Restore them or move the alias; "
                                "starting fresh would reassign every SID")
    return PreviousModel(
        found=True, reason=f"{cfg.registered_model} version {version.version} is @{cfg.alias}",
        registered_model=cfg.registered_model, version=str(version.version),
        model_uri=uris[TAG_MODEL_URI], sid_map_uri=uris[TAG_SID_MAP_URI], codebooks_uri=uris[TAG_CODEBOOKS_URI],
        metric=tags.get(TAG_METRIC), metric_value=float(tags[TAG_METRIC_VALUE]) if tags.get(TAG_METRIC_VALUE) else None,
        run_key=tags.get(TAG_RUN_KEY),
    )


def register(cfg: RetrainConfig, *, logged_model_id: str, tags: dict[str, str]) -> str:
    """Register a LoggedModel as a new version of the pipeline's model and give it the alias."""
    mlflow = _mlflow()
    version = mlflow.register_model(f"models:/{logged_model_id}", cfg.registered_model,
                                    tags={k: str(v) for k, v in tags.items()})
    mlflow.MlflowClient().set_registered_model_alias(cfg.registered_model, cfg.alias, version.version)
    log.info("registered %s version %s and moved @%s to it", cfg.registered_model, version.version, cfg.alias)
    return str(version.version)

