"""Input checks of the training stages and the loss masks of their examples (response-only for
chat rows, every token for narratives, the whole assistant span for reasoning), down to the
labels TRL's SFTTrainer builds from them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from components.common import artifacts, prompts, storage
from components.common.errors import InputError
from components.common.training import backbone, sft
from components.common.training.validation import valid_rows
from tests.training.conftest import CPU
from tests.training.synthetic import item_sid


@pytest.fixture(scope="module")
def catalog(synthetic) -> artifacts.Catalog:
    return artifacts.read_catalog(synthetic["sid_map"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, tiny_backbone, catalog):
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("with-sids") / "model"
    backbone.extend_with_sids(tiny_backbone, out, catalog.tokens, out.parent / "dl")
    return AutoTokenizer.from_pretrained(out)


def supervised_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([i for i, m in zip(ids, mask) if m])


def unsupervised_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([i for i, m in zip(ids, mask) if not m])


def test_catalog_from_sid_map(catalog):
    assert catalog.levels == 3 and len(catalog.sids) == 16
    assert catalog.sid_of["I5"] == item_sid(5)
    assert catalog.tokens[0] == "<a_0>" and "<c_1>" in catalog.tokens and len(catalog.tokens) == 2 + 4 + 2


def test_chat_rows_supervise_the_answer_only(tokenizer, synthetic, catalog):
    rows = artifacts.read_corpus(synthetic["corpus"], catalog, tasks=["title2sid"])
    encoded = sft.encode_corpus(tokenizer, rows[:1], supervise_end=False, max_length=512)
    ids, mask = encoded.input_ids[0], encoded.completion_mask[0]
    assert supervised_text(tokenizer, ids, mask) == item_sid(0)
    context = unsupervised_text(tokenizer, ids, mask)
    assert context.startswith("<|im_start|>user\nWhich item has the title")
    assert context.endswith("<|im_start|>assistant\n" + prompts.EMPTY_THINK + "<|im_end|>")  # then the end token
    with_end = sft.encode_corpus(tokenizer, rows[:1], supervise_end=True, max_length=512)
    assert supervised_text(tokenizer, with_end.input_ids[0], with_end.completion_mask[0]) == item_sid(0) + "<|im_end|>"


def test_narrative_rows_supervise_every_token_without_template(tokenizer, synthetic, catalog):
    rows = artifacts.read_corpus(synthetic["corpus"], catalog, tasks=["item_narrative"])
    encoded = sft.encode_corpus(tokenizer, rows[:1], supervise_end=False, max_length=512)
    ids, mask = encoded.input_ids[0], encoded.completion_mask[0]
    assert all(mask)
    assert tokenizer.decode(ids) == rows[0].text + "<|im_end|>"
    assert "<|im_start|>" not in tokenizer.decode(ids)


def test_reasoning_rows_supervise_think_block_sid_and_end(tokenizer, synthetic, catalog):
    rows = artifacts.read_reasoning(synthetic["reasoning"], catalog)
    encoded = sft.encode_reasoning(tokenizer, rows[:1], "reasoning", max_length=512)
    ids, mask = encoded.input_ids[0], encoded.completion_mask[0]
    assert supervised_text(tokenizer, ids, mask) == \
        prompts.think_block(rows[0].reasoning) + rows[0].target_sid + "<|im_end|>"
    assert unsupervised_text(tokenizer, ids, mask) == \
        prompts.render_prompt(tokenizer, prompts.reasoning_messages(rows[0].history_sids))


def test_truncation_keeps_the_end(tokenizer, synthetic, catalog):
    rows = artifacts.read_corpus(synthetic["corpus"], catalog, tasks=["sid2sid"])
    full = sft.encode_corpus(tokenizer, rows[:1], supervise_end=False, max_length=10_000)
    cut = sft.encode_corpus(tokenizer, rows[:1], supervise_end=False, max_length=12)
    assert cut.input_ids[0] == full.input_ids[0][-12:] and cut.completion_mask[0] == full.completion_mask[0][-12:]
    assert cut.stats()["truncated"] == {"sid2sid": 1}


def test_sft_trainer_labels_follow_the_masks(tmp_path, tokenizer, synthetic, catalog):
    """TRL 1.16 turns completion_mask into labels: -100 exactly where the mask is 0."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config
    from trl import SFTConfig, SFTTrainer

    rows = artifacts.read_corpus(synthetic["corpus"], catalog)
    encoded = sft.encode_corpus(tokenizer, rows, supervise_end=False, max_length=512)
    model = AutoModelForCausalLM.from_config(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, completion_only_loss=True, max_length=None,
                     report_to=[], shuffle_dataset=False, **CPU)
    trainer = SFTTrainer(model=model, args=args, train_dataset=encoded.dataset(), processing_class=tokenizer)
    prepared = trainer.train_dataset
    assert len(prepared) == len(rows)
    for ids, mask, row in zip(encoded.input_ids, encoded.completion_mask, prepared):
        assert row["input_ids"] == ids
        assert row["labels"] == [i if m else -100 for i, m in zip(ids, mask)]
    kinds = {r.loss for r in rows}
    assert kinds == {"response", "full"}
    batch = trainer.data_collator([prepared[0], prepared[-1]])
    assert torch.equal(batch["labels"] != -100, batch["labels"] == batch["input_ids"])


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


def rewrite(src: str, dst, changes: dict[tuple[int, str], object]) -> str:
    table = storage.read_parquet(src).to_pylist()
    for (index, column), value in changes.items():
        table[index][column] = value
    storage.write_parquet(pa.Table.from_pylist(table, schema=storage.read_parquet(src).schema), dst)
    return str(dst)


def test_corpus_sid_not_in_sid_map_is_rejected(tmp_path, synthetic, catalog):
    bad = rewrite(synthetic["corpus"], tmp_path / "corpus.parquet",
                  {(2, "text"): "Meet <a_1><b_3><c_7>, a new stapler."})
    with pytest.raises(InputError, match=r"row 2 \(task 'item_narrative'\): SID <a_1><b_3><c_7> is not in"):
        artifacts.read_corpus(bad, catalog)
    messages = [{"role": "user", "content": "Which item?"}, {"role": "assistant", "content": "<a_0><b_0><c_9>"}]
    bad = rewrite(synthetic["corpus"], tmp_path / "corpus2.parquet", {(0, "messages"): messages})
    with pytest.raises(InputError, match="row 0 .*<a_0><b_0><c_9> is not in the sid_map"):
        artifacts.read_corpus(bad, catalog)


@pytest.mark.parametrize(("change", "message"), [
    ({(0, "loss"): "half"}, "loss 'half' is neither"),
    ({(0, "messages"): [{"role": "user", "content": "hi"}]}, "must end with a non-empty assistant"),
    ({(2, "text"): " "}, "needs a non-empty text"),
])
def test_malformed_corpus_rows_are_rejected(tmp_path, synthetic, catalog, change, message):
    with pytest.raises(InputError, match=message):
        artifacts.read_corpus(rewrite(synthetic["corpus"], tmp_path / "c.parquet", change), catalog)


def test_unknown_task_and_missing_column(tmp_path, synthetic, catalog):
    with pytest.raises(InputError, match=r"task\(s\) \['nope'\] requested but absent"):
        artifacts.read_corpus(synthetic["corpus"], catalog, tasks=["nope"])
    table = storage.read_parquet(synthetic["corpus"]).drop(["loss"])
    storage.write_parquet(table, tmp_path / "c.parquet")
    with pytest.raises(InputError, match=r"missing column\(s\) \['loss'\]"):
        artifacts.read_corpus(str(tmp_path / "c.parquet"), catalog)


@pytest.mark.parametrize(("change", "message"), [
    ({(1, "sid"): item_sid(0), (1, "codes"): [0, 0, 0]}, "already belongs to row 0"),
    ({(1, "status"): "gone"}, "status 'gone' is not one of"),
    ({(1, "codes"): [0, 0, 0]}, "do not match sid"),
])
def test_bad_sid_maps_are_rejected(tmp_path, synthetic, change, message):
    with pytest.raises(InputError, match=message):
        artifacts.read_catalog(rewrite(synthetic["sid_map"], tmp_path / "s.parquet", change))


def test_retired_items_leave_the_catalog_but_keep_their_tokens(tmp_path, synthetic):
    catalog = artifacts.read_catalog(rewrite(synthetic["sid_map"], tmp_path / "s.parquet", {(15, "status"): "retired"}))
    assert item_sid(15) not in catalog.sids and "I15" not in catalog.item_ids and "I15" in catalog.retired
    assert "<a_1>" in catalog.tokens


def test_valid_samples_and_reasoning_are_checked(tmp_path, synthetic, catalog):
    samples = storage.read_parquet(synthetic["samples"]).to_pylist()
    valid_row = next(i for i, r in enumerate(samples) if r["split"] == "valid")
    bad = rewrite(synthetic["samples"], tmp_path / "samples.parquet", {(valid_row, "target"): "I999"})
    with pytest.raises(InputError, match=r"item\(s\) \['I999'\] have no SID"):
        valid_rows(bad, catalog, 0)
    histories = valid_rows(synthetic["samples"], catalog, 0)
    assert histories and all(target in catalog.sids for _, target in histories)
    leak = rewrite(synthetic["reasoning"], tmp_path / "r.parquet",
                   {(0, "reasoning"): f"Obviously {storage.read_parquet(synthetic['reasoning'])['target_sid'][0]}."})
    with pytest.raises(InputError, match="mentions the target SID"):
        artifacts.read_reasoning(leak, catalog)
