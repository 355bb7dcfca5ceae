"""Backbones: the offline ``sidreasoner tiny-backbone`` command, and loading / checking a saved
causal LM from a local folder or a gs:// URI."""

from __future__ import annotations

import json

import pytest

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
