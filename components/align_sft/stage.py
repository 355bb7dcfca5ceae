"""Stage ``align_sft`` (RECIPE.md section 3): the backbone + SID tokens, fine-tuned on the
alignment corpus; validated on the valid split (SID history -> next SID).

The recipe, top to bottom:

1. a scheduled run with a production model starts from it instead of the backbone (warm start);
2. pre-flight: the machine can run the settings, the backbone is a causal LM;
3. the inputs, checked: the catalog (SID tokens), the corpus (the configured tasks), the valid
   split's histories in a seeded order (its first ``max_valid_samples`` for the validation loss,
   its first ``validation.max_samples`` for the direct-mode HR/NDCG validation);
4. the starting model: the backbone (or the tiny one, built from the run's text) extended with
   the SID tokens; the corpus and valid rows encoded;
5. the SFT engine trains, resumes or reuses a finished run of the same job, and publishes the
   model; the stats and the MLflow LoggedModel follow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.align_sft.config import AlignSFTConfig, BackboneConfig
from components.common import artifacts, storage
from components.common.lineage import StageRun
from components.common.registry import continued_from
from components.common.stage import StageContext
from components.common.training import backbone, launch, sft
from components.common.training.models import finish_stage
from components.common.training.validation import valid_rows, validation_sample

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
    valid = valid_rows(inputs["samples"], catalog, ctx.seed)  # seeded order: the samples below are prefixes
    loss_rows = valid[: cfg.max_valid_samples] if cfg.max_valid_samples is not None else valid
    digests = dict(ctx.input_digests)
    if cfg.backbone.uri is not None:
        digests["backbone"] = storage.digest(cfg.backbone.uri)

    def prepare_base(out: Path) -> dict[str, Any]:
        if cfg.backbone.tiny is not None:
            source = out.parent / "tiny"
            backbone.build_tiny(source, inputs["items"], inputs["corpus"], seed=ctx.seed,
                                **cfg.backbone.tiny.model_dump())
        elif cfg.backbone.from_config is not None:
            source = out.parent / "from-config"
            backbone.build_from_config(source, inputs["items"], inputs["corpus"], seed=ctx.seed,
                                       **cfg.backbone.from_config.model_dump())
        else:
            source = cfg.backbone.uri
        _, new_ids = backbone.extend_with_sids(source, out, catalog.tokens, out.parent / "download", ctx.seed)
        return {"new_token_ids": new_ids, "new_token_warmup_steps": cfg.backbone.new_token_warmup_steps}

    def encode(tokenizer):
        return (sft.encode_corpus(tokenizer, corpus, cfg.supervise_end_token, cfg.max_length),
                sft.encode_direct(tokenizer, loss_rows, cfg.supervise_end_token, cfg.max_length))

    record = artifacts.ModelRecord(sid_space=catalog.sid_space, sid_map_digest=ctx.input_digests["sid_map"], stage=NAME)
    stats = sft.run_sft(stage=NAME, cfg=cfg, ctx=ctx, tracker=tracker, output=outputs["model"], input_digests=digests,
                        prepare_base=prepare_base, encode=encode, record=record, sid_vocab=list(catalog.tokens),
                        gpus=gpus, validation=validation_sample(valid, catalog, cfg.validation))
    return finish_stage(NAME, cfg, tracker, outputs, stats, digests, model_uri=ctx.uri_of("model", outputs["model"]))
