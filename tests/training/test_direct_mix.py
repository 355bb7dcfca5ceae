"""reason_sft.direct_fraction: direct-mode examples mixed into reasoning SFT's training set,
rendered exactly as direct-mode decoding prompts the model; 0 leaves the training set as it was."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from components.common import artifacts, decoding_core, prompts
from components.common.training import backbone, sft
from components.reason_sft import STAGE as REASON
from components.reason_sft.config import ReasonSFTConfig
from components.reason_sft.stage import encode_training
from tests.training.conftest import CPU
from tests.training.synthetic import write_reasoning
from tests.training.test_data import catalog, tokenizer  # noqa: F401 (fixtures)
from tests.training.test_stages import run_stage, sid_tokens


@pytest.fixture(scope="module")
def rows(synthetic, catalog) -> list[artifacts.ReasoningRow]:
    return artifacts.read_reasoning(synthetic["reasoning"], catalog)


class RecordingDecoder:
    """Decoder stand-in that records the texts decode_mode hands to the SID beam."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def rows_per_call(self, mode):
        return None

    def beam(self, texts):
        self.texts.extend(texts)
        return [SimpleNamespace(sids=[], scores=[]) for _ in texts]


def config(**overrides) -> ReasonSFTConfig:
    return ReasonSFTConfig(**CPU, max_length=512, **overrides)


def test_zero_leaves_the_reasoning_rows_unchanged(tokenizer, rows):
    encoded = encode_training(tokenizer, rows, config(), seed=0)
    plain = sft.encode_reasoning(tokenizer, rows, "reasoning", 512)
    assert encoded.input_ids == plain.input_ids and encoded.completion_mask == plain.completion_mask
    assert encoded.stats() == plain.stats() and set(encoded.rows) == {"reasoning"}


def test_direct_rows_are_rendered_as_direct_decoding_prompts(tokenizer, rows):
    fraction = 0.5
    encoded = encode_training(tokenizer, rows, config(direct_fraction=fraction), seed=0)
    n_direct = round(fraction * len(rows))
    assert encoded.rows == {"reasoning": len(rows), "direct": n_direct}
    # every reasoning row is still trained, first and unchanged
    plain = sft.encode_reasoning(tokenizer, rows, "reasoning", 512)
    assert encoded.input_ids[: len(rows)] == plain.input_ids
    direct_ids = encoded.input_ids[len(rows):]
    direct_masks = encoded.completion_mask[len(rows):]
    assert len(direct_ids) == n_direct
    by_prompt = {}
    for row in rows:
        decoder = RecordingDecoder(tokenizer)
        decoding_core.decode_mode(decoder, [row.history_sids], "direct")
        (text,) = decoder.texts
        assert text.endswith(prompts.EMPTY_THINK)
        by_prompt.setdefault(tuple(tokenizer(text)["input_ids"]), set()).add(row.target_sid)
    for ids, mask in zip(direct_ids, direct_masks):
        n_prompt = mask.index(1)
        assert not any(mask[:n_prompt]) and all(mask[n_prompt:])  # the SID and end token supervised
        prompt = tuple(ids[:n_prompt])
        assert prompt in by_prompt, "a direct example's prompt is not what direct decoding feeds the model"
        answer = tokenizer.decode(ids[n_prompt:])
        assert answer.endswith("<|im_end|>") and answer.removesuffix("<|im_end|>") in by_prompt[prompt]


def test_the_share_is_seeded(tokenizer, rows):
    first = encode_training(tokenizer, rows, config(direct_fraction=0.3), seed=1)
    again = encode_training(tokenizer, rows, config(direct_fraction=0.3), seed=1)
    assert first.input_ids == again.input_ids


def test_the_stage_trains_on_the_mixed_rows(tmp_path, tiny_backbone, synthetic, tracking_uri):
    model = tmp_path / "sid-model"
    backbone.extend_with_sids(tiny_backbone, model, sid_tokens(synthetic), tmp_path / "download", seed=42)
    reasoning = write_reasoning(tmp_path / "reasoning.parquet", 40, targets=[0, 1])
    run = run_stage(REASON, {
        "max_steps": 2, "global_batch_size": 8, "per_device_batch_size": 8, "max_length": 512,
        "eval_strategy": "no", "early_stopping_patience": None, "eval_fraction": 0, "direct_fraction": 0.25,
        "checkpoint": {"every_steps": 100},
    }, tmp_path, {"sft_model": str(model), "reasoning": reasoning, "sid_map": synthetic["sid_map"]}, tracking_uri)
    assert run["stats"]["data"]["train"]["rows"] == {"reasoning": 40, "direct": 10}


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_direct_fraction_is_validated(bad):
    with pytest.raises(ValidationError, match="direct_fraction"):
        config(direct_fraction=bad)
