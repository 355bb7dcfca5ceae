"""Backbones: the offline ``sidreasoner tiny-backbone`` command, a published architecture built
from its config (random weights), and loading / checking a saved causal LM from a local folder
or a gs:// URI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from components.common import artifacts, modeling, storage
from components.common.config import ConfigError
from components.common.training import backbone
from pipeline.cli import main


def test_tiny_backbone_command(tmp_path, synthetic, capsys):
    out = tmp_path / "tiny"
    assert main(["tiny-backbone", "--items", synthetic["items"], "--corpus", synthetic["corpus"],
                 "--sid-map", synthetic["sid_map"], "--out", str(out), "--vocab-size", "400", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"out": str(out), "sid_tokens_added": 8}
    assert modeling.check_causal_lm(out) == "qwen3"
    model, tokenizer = modeling.load_causal_lm(out)
    vocabulary = artifacts.model_sid_vocabulary(str(out))
    assert len(vocabulary) == 8
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    # SID tokens are atomic normal tokens; catalog words were learnt by the BPE merges
    assert tokenizer.tokenize("<a_1><b_2><c_1>") == ["<a_1>", "<b_2>", "<c_1>"]
    assert tokenizer.decode(tokenizer("<a_1><b_2><c_1>").input_ids, skip_special_tokens=True) == "<a_1><b_2><c_1>"
    assert len(tokenizer.tokenize(" stapler")) == 1
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


def test_tiny_backbone_command_rejects_impossible_shapes(tmp_path, synthetic, capsys):
    assert main(["tiny-backbone", "--items", synthetic["items"], "--out", str(tmp_path / "t"),
                 "--hidden-size", "66"]) == 2
    assert "divisible by num_heads" in capsys.readouterr().err


def test_backbone_from_gcs(gcs_bucket, tiny_backbone, tmp_path):
    uri = storage.join(gcs_bucket, "models", "tiny")
    storage.upload_dir(tiny_backbone, uri)
    backbone.check_backbone_uri(uri, "align_sft.backbone.uri")
    model, tokenizer = modeling.load_causal_lm(uri, cache_dir=tmp_path / "cache")
    assert model.config.model_type == "qwen3" and len(tokenizer) > 300
    with pytest.raises(ConfigError, match=r"align_sft.backbone.uri: gs://.*/missing: no complete model folder"):
        backbone.check_backbone_uri(storage.join(gcs_bucket, "models", "missing"), "align_sft.backbone.uri")


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_built_in_qwen3_architecture_is_the_published_config():
    published = json.loads((FIXTURES / "qwen3_1.7b_config.json").read_text())
    tokenizer_keys = {"vocab_size", "bos_token_id", "eos_token_id"}
    assert backbone.QWEN3_1_7B == {k: v for k, v in published.items() if k not in tokenizer_keys}


def test_a_backbone_of_qwen3s_architecture_is_built_from_its_config(tmp_path, synthetic):
    """Qwen3-1.7B's architecture at a small width, random weights, the run's tokenizer: the
    sizes asked for, everything else the published config's, stored in bf16 like the checkpoint."""
    from safetensors import safe_open
    from transformers import AutoConfig

    out = backbone.build_from_config(tmp_path / "qwen3-small", synthetic["items"], synthetic["corpus"], seed=1,
                                     architecture="qwen3-1.7b", vocab_size=400, hidden_size=64, intermediate_size=96,
                                     num_layers=2, num_heads=2, num_kv_heads=1, head_dim=None, max_positions=None)
    config = AutoConfig.from_pretrained(out)
    model, tokenizer = modeling.load_causal_lm(out)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads) == (64, 96, 2, 2, 1)
    assert (config.head_dim, config.rope_parameters["rope_theta"], config.rms_norm_eps, config.tie_word_embeddings,
            config.max_position_embeddings) == \
        (128, 1000000, 1e-06, True, 40960)  # Qwen3's: heads x head_dim (256) need not be the width
    assert config.vocab_size == len(tokenizer) and config.pad_token_id == tokenizer.pad_token_id
    assert model.model.layers[0].self_attn.q_norm is not None  # Qwen3's QK-norm
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.bfloat16}
    # the same architecture from a config.json file
    again = backbone.build_from_config(tmp_path / "from-file", synthetic["items"], synthetic["corpus"], seed=1,
                                       architecture=str(FIXTURES / "qwen3_1.7b_config.json"), vocab_size=400,
                                       hidden_size=64, intermediate_size=96, num_layers=2, num_heads=2, num_kv_heads=1)
    assert AutoConfig.from_pretrained(again).to_dict() | {"_name_or_path": ""} == config.to_dict() | {"_name_or_path": ""}
    with pytest.raises(ConfigError, match="backbone architecture 'qwen2-7b': neither a built-in one"):
        backbone.build_from_config(tmp_path / "bad", synthetic["items"], None, seed=1, architecture="qwen2-7b")


def test_alignment_starts_from_a_config_built_backbone(tmp_path, synthetic, tracking_uri):
    """align_sft with ``backbone.from_config``: built, extended with the SID tokens (bf16
    weights, as a real checkpoint) and trained."""
    from components.align_sft import STAGE as ALIGN
    from components.common.config import parse_section
    from tests.training.conftest import CPU, context

    cfg = parse_section(ALIGN.config, {**CPU, "backbone": {"from_config": {
        "vocab_size": 400, "hidden_size": 64, "intermediate_size": 96, "num_layers": 1, "num_heads": 2,
        "num_kv_heads": 1, "head_dim": 32}}, "max_steps": 2, "global_batch_size": 4, "per_device_batch_size": 4,
        "max_length": 256, "eval_strategy": "no", "early_stopping_patience": None}, "align_sft")
    outputs = {"model": str(tmp_path / "model"), "stats": str(tmp_path / "stats.json")}
    inputs = {k: synthetic[k] for k in ("items", "samples", "sid_map", "corpus")}
    ALIGN.execute(cfg, context(tmp_path, tracking_uri), inputs, outputs)
    stats = storage.read_json(outputs["stats"])
    assert stats["global_step"] == 2 and stats["tokens_per_s"] > 0
    model, tokenizer = modeling.load_causal_lm(outputs["model"])
    assert (model.config.head_dim, model.config.num_attention_heads) == (32, 2)
    assert tokenizer.tokenize("<a_1><b_2><c_1>") == ["<a_1>", "<b_2>", "<c_1>"]
