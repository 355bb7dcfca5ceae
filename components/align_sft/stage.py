"""Stage ``align_sft`` (RECIPE.md section 3): the backbone + SID tokens, fine-tuned on the
alignment corpus; validation loss on the valid split (SID history -> next SID).

Inputs: ``items`` (tiny-backbone text), ``samples`` (valid split), ``sid_map`` (SID tokens and
catalog), ``corpus``, optionally ``previous`` (scheduled retraining: warm start from the
production model). Outputs: ``model`` (save_pretrained folder + sid_vocab.json), ``stats``
(JSON).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.align_sft import backbone, data
from components.align_sft.config import AlignSFTConfig, BackboneConfig
from components.align_sft.sft import run_sft
from components.common import storage, training
from components.common.lineage import StageRun
from components.common.registry import continued_from
from components.common.stage import Stage, StageContext

log = logging.getLogger(__name__)

NAME = "align_sft"


def preflight(cfg: AlignSFTConfig, gpus: int) -> None:
    """Config checks that need the machine or the backbone, before reading any data."""
    training.check_hardware(cfg, NAME, gpus)
    training.gradient_accumulation(cfg.global_batch_size, cfg.per_device_batch_size,
                                   training.world_size(cfg, gpus), f"{NAME}.global_batch_size")
    if cfg.backbone.uri is not None:
        backbone.check_backbone_uri(cfg.backbone.uri, f"{NAME}.backbone.uri")


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
    gpus = training.visible_gpus()
    preflight(cfg, gpus)
    catalog = data.read_catalog(inputs["sid_map"])
    corpus = data.read_corpus(inputs["corpus"], catalog, cfg.tasks)
    valid = data.read_valid_histories(inputs["samples"], catalog, cfg.max_valid_samples, ctx.seed)
    digests = {name: storage.digest(uri) for name, uri in inputs.items()}
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
        return (data.encode_corpus(tokenizer, corpus, cfg.supervise_end_token, cfg.max_length),
                data.encode_direct(tokenizer, valid, cfg.supervise_end_token, cfg.max_length))

    stats = run_sft(stage=NAME, cfg=cfg, ctx=ctx, tracker=tracker, output=outputs["model"], input_digests=digests,
                    prepare_base=prepare_base, encode=encode, sid_vocab=list(catalog.tokens), gpus=gpus)
    return training.finish_stage(NAME, cfg, tracker, outputs, stats, digests)


STAGE = Stage(
    name=NAME,
    config=AlignSFTConfig,
    run=run,
    description="Stage 1: SID-language alignment SFT of the backbone (+ SID tokens) on the corpus mix, "
                "validation loss on the valid split.",
    optional_inputs={"previous": "previous_model's JSON (scheduled retraining): start from the production model"},
    inputs={"items": "items Parquet (text of the tiny backbone's tokenizer)",
            "samples": "samples Parquet (valid split: validation loss)",
            "sid_map": "sid_map Parquet (SID tokens and catalog)",
            "corpus": "corpus Parquet (alignment tasks and narratives)"},
    outputs={"model": "model", "stats": "stats.json"},
)
