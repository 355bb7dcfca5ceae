"""Stage ``previous_model``: which model is in production, and what it was built from.

Reads the MLflow model registry (``retrain.registered_model`` @ ``retrain.alias``) and writes
the ``previous`` artifact (JSON, :class:`components.common.registry.PreviousModel`): found or
not, and the production version's model folder, sid_map and codebooks URIs and score.
``sid_quantize`` then keeps that run's SIDs and ``align_sft`` warm-starts from its model; the
first run of a schedule finds nothing and starts fresh.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from components.common.lineage import StageRun
from components.common.registry import RetrainConfig, find_previous
from components.common.stage import StageContext

log = logging.getLogger(__name__)


def run(cfg: RetrainConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    previous = find_previous(cfg)
    digest = previous.write(outputs["previous"])
    tracker.set_tags({"sidreasoner.previous_model": f"{previous.registered_model} v{previous.version}"
                      if previous.found else "none"})
    tracker.log_dict(previous.__dict__, "previous_model.json")
    log.info("previous model: %s", previous.reason)
    return {"previous": {"digest": digest, "found": previous.found, "version": previous.version or ""}}
