"""Stage ``align_sft`` (RECIPE.md section 3): the backbone + SID tokens, fine-tuned on the
alignment corpus; validated on the valid split (SID history -> next SID).

The recipe, top to bottom:

1. a scheduled run with a production model starts from it instead of the backbone (warm start);
2. pre-flight: the machine can run the settings, the backbone is a causal LM;
3. the inputs, checked: the catalog (SID tokens), the corpus (the configured tasks), the valid
   split's histories (a seeded sample);
4. the starting model: the backbone (or the tiny one, built from the run's text) extended with
   the SID tokens; the corpus and valid rows encoded;
5. the SFT engine trains, resumes or reuses a finished run of the same job, and publishes the
   model; the stats and the MLflow LoggedModel follow.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.align_sft.config import AlignSFTConfig, BackboneConfig
from components.common import artifacts, storage
from components.common.errors import InputError
from components.common.lineage import StageRun
from components.common.registry import continued_from
from components.common.stage import StageContext
from components.common.training import backbone, launch, sft
from components.common.training.models import finish_stage

log = logging.getLogger(__name__)

NAME = "align_sft"


def warm_start(cfg: AlignSFTConfig, inputs: Mapping[str, str], tracker: StageRun) -> AlignSFTConfig:
    """With a production model found by ``previous_model``, start from it instead of the backbone."""
    previous = continued_from(inputs, "starting from the configured backbone")
    if previous is None:
        return cfg
    tracker.set_tags({"sidreasoner.warm_start_from": f"{previous.registered_model} v{previous.version}: "
                                                     f"{previous.model_uri}"})
    log.info("warm start from %s at %s", previous.reason, previous.model_uri)
    return cfg.model_copy(update={"backbone": BackboneConfig(
        uri=previous.model_uri, new_token_warmup_steps=cfg.backbone.new_token_warmup_steps)})


def valid_histories(uri: str, catalog: artifacts.Catalog, limit: int | None, seed: int) -> list[tuple[list[str], str]]:
    """(history SIDs, target SID) of the valid split (a seeded sample of ``limit``)."""
    rows = []
    for sample in artifacts.read_samples(uri).split("valid"):
        missing = [item for item in [*sample.history, sample.target] if item not in catalog.sid_of]
        if missing:
            raise InputError(f"samples {uri} row {sample.row}: item(s) {missing[:3]} have no SID in the sid_map")
        rows.append(([catalog.sid_of[item] for item in sample.history], catalog.sid_of[sample.target]))
    if not rows:
        raise InputError(f"samples {uri}: no rows in the valid split (needed for validation)")
    if limit is not None and len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    return rows


def run(cfg: AlignSFTConfig, ctx: StageContext, inputs: Mapping[str, str], outputs: Mapping[str, str],
        tracker: StageRun) -> dict[str, dict[str, Any]]:
    cfg = warm_start(cfg, inputs, tracker)
    gpus = launch.visible_gpus()
    launch.check_hardware(cfg, NAME, gpus)
    launch.gradient_accumulation(cfg.global_batch_size, cfg.per_device_batch_size,
                                 launch.world_size(cfg, gpus), f"{NAME}.global_batch_size")
    if cfg.backbone.uri is not None:
        backbone.check_backbone_uri(cfg.backbone.uri, f"{NAME}.backbone.uri")

    catalog = artifacts.read_catalog(inputs["sid_map"])
    corpus = artifacts.read_corpus(inputs["corpus"], catalog, cfg.tasks)
    valid = valid_histories(inputs["samples"], catalog, cfg.max_valid_samples, ctx.seed)
    digests = dict(ctx.input_digests)
    if cfg.backbone.uri is not None:
        digests["backbone"] = storage.digest(cfg.backbone.uri)

    def prepare_base(out: Path) -> dict[str, Any]:
        if cfg.backbone.tiny is not None:
            source = out.parent / "tiny"
            backbone.build_tiny(source, inputs["items"], inputs["corpus"], seed=ctx.seed,
                                **cfg.backbone.tiny.model_dump())
        else:
            source = cfg.backbone.uri
        _, new_ids = backbone.extend_with_sids(source, out, catalog.tokens, out.parent / "download", ctx.seed)
        return {"new_token_ids": new_ids, "new_token_warmup_steps": cfg.backbone.new_token_warmup_steps}

    def encode(tokenizer):
        return (sft.encode_corpus(tokenizer, corpus, cfg.supervise_end_token, cfg.max_length),
                sft.encode_direct(tokenizer, valid, cfg.supervise_end_token, cfg.max_length))

    record = artifacts.ModelRecord(sid_space=catalog.sid_space, sid_map_digest=ctx.input_digests["sid_map"], stage=NAME)
    stats = sft.run_sft(stage=NAME, cfg=cfg, ctx=ctx, tracker=tracker, output=outputs["model"], input_digests=digests,
                        prepare_base=prepare_base, encode=encode, record=record, sid_vocab=list(catalog.tokens),
                        gpus=gpus)
    return finish_stage(NAME, cfg, tracker, outputs, stats, digests, model_uri=ctx.uri_of("model", outputs["model"]))
