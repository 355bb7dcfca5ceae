"""The SFT engine's CPU loss (``loss_kernel: logits``, the model's own forward) is TRL's loss:
the same value and the same gradients as SFTTrainer's fused LM-head kernel (or, with label
smoothing, its ``LabelSmoother`` over the full logits), on a padded batch of mixed-length rows
with prompt tokens unsupervised, under gradient accumulation's normalisation, with the LM head
run on the supervised positions only."""

from __future__ import annotations

import pytest
import torch

from components.common.training import sft
from tests.tiny_sid_model import build_sid_model

CODEBOOKS = (4, 5, 6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_logits_loss_equals_trls_loss(tmp_path, smoothing):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_dir = build_sid_model(tmp_path / "model", CODEBOOKS, seed=5)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sids = ["<a_0><b_1><c_2>", "<a_3><b_4><c_5>", "<a_1><b_0><c_3>"]
    rows = [([sids[0]], sids[1]), (sids, sids[2]), ([sids[2], sids[1]], sids[0]), (sids * 3, sids[1])]
    encoded = sft.encode_direct(tokenizer, rows, supervise_end=True, max_length=256)
    encoded.add("narrative", *sft.encode_text(tokenizer, f"{sids[0]} is a blue gel pen for the office."))
    args = SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to=[],
                     per_device_train_batch_size=5, label_smoothing_factor=smoothing, completion_only_loss=True,
                     max_length=None, packing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=encoded.dataset(), processing_class=tokenizer)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert (batch["attention_mask"] == 0).any() and (batch["labels"] == -100).any()  # padding and prompts
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    num_items = torch.tensor(supervised * 3)  # as if the step accumulated 3 such micro-batches

    def loss_and_grads(compute):
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    model.train()
    trls, trls_grads = loss_and_grads(lambda: trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items))
    head_rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: head_rows.append(args[0].shape))
    logits, logits_grads = loss_and_grads(lambda: sft.model_loss(trainer, model, dict(batch), False, num_items))
    hook.remove()
    # the LM head saw the supervised positions only
    assert head_rows == [torch.Size([supervised, model.config.hidden_size])]
    with torch.no_grad():  # an evaluation that asks for the outputs gets the full logits, and the same loss
        full, outputs = sft.model_loss(trainer, model, dict(batch), True, num_items)
    assert outputs.logits.shape[:2] == batch["input_ids"].shape
    assert full.item() == pytest.approx(logits.item(), rel=1e-5)
    assert logits.item() == pytest.approx(trls.item(), rel=1e-5)
    for name, grad in trls_grads.items():
        torch.testing.assert_close(logits_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # and it is the per-token cross-entropy of the supervised tokens, each target's probability
    # 1 - smoothing and the rest spread evenly over the vocabulary
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    log_probs = torch.log_softmax(out.logits[:, :-1].double(), dim=-1)
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    nll = -log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    uniform = -log_probs.mean(dim=-1)
    expected = ((1 - smoothing) * nll + smoothing * uniform)[mask].sum() / num_items.item()
    assert logits.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (logits.item() > nll[mask].sum().item() / num_items.item()) == (smoothing > 0)
