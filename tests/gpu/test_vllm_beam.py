"""On a GPU: the trie-constrained beam search through real vLLM 0.31 ranks exactly as the
transformers one, on both of vLLM's model runners (the V2 runner our engine arguments pin, and
V1 when an operator sets VLLM_USE_V2_MODEL_RUNNER=0).

The model is a tiny random Qwen3 built on the spot (head size 32: vLLM's fp32-capable attention
backends need at least that), decoded in float32 by both engines: same SIDs in the same order,
scores within 1e-3. Each vLLM engine runs in a spawned process of its own, with its runner chosen
in that process's environment before vLLM is imported, and gives its GPU memory back on exit.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest
import torch

from components.common import modeling, sid
from components.common.constrained import SidTrie, constrained_beam_search
from tests.common.conftest import sid_prompts
from tests.tiny_sid_model import build_sid_model

pytestmark = pytest.mark.gpu

CODEBOOKS = (4, 5, 6)
NUM_BEAMS = 10


def vllm_beams(folder: str, sids: list[str], trie_path: str, prompt_ids: list[list[int]], runner: str | None,
               ) -> tuple[bool, list[tuple[list[str], list[float]]]]:
    """(whether the engine ran the V2 runner, the ranked SIDs and scores): the body of a spawned
    process."""
    from components.common.constrained_vllm import MODEL_RUNNER_ENV, trie_engine_kwargs, vllm_constrained_beam_search

    if runner is None:
        os.environ.pop(MODEL_RUNNER_ENV, None)  # trie_engine_kwargs pins the runner itself
    else:
        os.environ[MODEL_RUNNER_ENV] = runner
    from vllm import LLM

    llm = LLM(model=folder, tokenizer=folder, dtype="float32", seed=0, enforce_eager=True,
              gpu_memory_utilization=0.3, max_model_len=1024, **trie_engine_kwargs(NUM_BEAMS))
    trie = SidTrie.from_tokenizer(llm.get_tokenizer(), sids)
    ranked = vllm_constrained_beam_search(llm, prompt_ids, trie, trie_path, num_beams=NUM_BEAMS)
    return llm.llm_engine.vllm_config.use_v2_model_runner, [(r.sids, r.scores) for r in ranked]


@pytest.mark.parametrize("runner, v2", [(None, True), ("0", False)], ids=["pinned-v2", "operator-v1"])
def test_hf_and_vllm_constrained_beam_search_agree(runner, v2, tmp_path):
    folder = build_sid_model(tmp_path / "model", CODEBOOKS, seed=3, hidden_size=128, intermediate_size=256,
                             num_heads=4, num_kv_heads=2)
    model, tok = modeling.load_causal_lm(folder, dtype=torch.float32)
    model.to("cuda").eval()
    rng = random.Random(7)
    sids = [sid.format_sid(c) for c in sorted({tuple(rng.randrange(n) for n in CODEBOOKS) for _ in range(40)})]
    texts = sid_prompts(tok, sids)
    trie = SidTrie.from_tokenizer(tok, sids)
    trie.save(tmp_path / "trie.pt")
    expected = constrained_beam_search(model, tok, texts, trie, num_beams=NUM_BEAMS)
    prompt_ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        ran_v2, got = pool.submit(vllm_beams, str(folder), sids, str(tmp_path / "trie.pt"), prompt_ids,
                                  runner).result()
    assert ran_v2 is v2
    for (sids_got, scores_got), e in zip(got, expected, strict=True):
        assert sids_got == e.sids
        assert scores_got == pytest.approx(e.scores, abs=1e-3)
