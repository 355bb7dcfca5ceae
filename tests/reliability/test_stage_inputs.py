"""Bad input to the stages after ingest, one row per defect, run through each stage's CLI.

Every row starts from valid inputs (``tests/reliability/inputs.py``; the baselines are checked
to get past every check below), changes one thing and expects one clear message naming the
file, row or field, a clean non-zero exit, and nothing under ``--out``. Case classes:

* ``missing or wrong artifact``: an input that does not exist, is a file where a folder is due
  (or the reverse), or is not Parquet;
* ``contract broken``: a column missing or of the wrong type, a duplicate id, an empty table, a
  row that breaks its artifact's rules;
* ``artifacts that do not belong together``: inputs of different SID spaces (quantization runs),
  a model that lacks the sid_map's tokens, samples naming items the sid_map lacks;
* ``leak``: a reasoning path that names its target;
* ``config``: an impossible setting, a typo in any section, hardware the run does not have, a
  secret in the profile.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from components.common.config import ConfigError
from components.common.storage import StorageError
from components.teacher_corpus.teacher import TeacherError
from tests.reliability import inputs as ins
from tests.reliability.harness import SECRET, Case, StageCall, build_with, check, run_in_process
from tests.reliability.inputs import CPU, OTHER_SPACE, rewrite_table, rows, stage_call

MISSING = "missing or wrong artifact"
CONTRACT = "contract broken"
MISMATCH = "artifacts that do not belong together"
LEAK = "leak"
CONFIG = "config"

SID_QUANTIZE = {"method": "rq_kmeans", "codebook_sizes": [4, 4], "cpu_threads": 1, "rq_kmeans": {"iters": 5}}
TEACHER = {"teacher": {"backend": "offline"}, "enrichment": {"users": 2, "items": 2}}
TRAIN = {**CPU, "max_steps": 2, "eval_strategy": "no", "early_stopping_patience": None,
         "global_batch_size": 4, "per_device_batch_size": 4, "max_length": 256}
ALIGN = {**TRAIN, "backbone": {"tiny": {"vocab_size": 300}}}
REASON = {**TRAIN, "eval_fraction": 0}
GRPO = {**CPU, "max_steps": 1, "num_generations": 2, "per_device_batch_size": 2, "rollout_batch_size": 2,
        "rollout": {"max_completion_length": 8, "max_prompt_length": 1024},
        "validation": {"every_steps": None}}  # its periodic validation needs samples, which these rows do not vary
EVALUATE = {"splits": ["test"], "beam_width": 2, "ks": [1, 2], "modes": ["direct"], "max_reasoning_tokens": 8}


# ----------------------------------------------------------------------------------------------
# Builders: valid inputs of the stage under ROOT/in, then one change
# ----------------------------------------------------------------------------------------------


def catalog_stage(stage: str, default_section: dict, inputs: tuple[str, ...]):
    """The builder of a stage whose inputs are all catalog artifacts (no model)."""
    def builder(change=None, section=None, sets=()):
        def build(root: Path) -> StageCall:
            paths = ins.catalog(root)
            if change:
                change(paths)
            return stage_call(root, stage, section or default_section, {k: paths[k] for k in inputs}, sets)
        return build
    return builder


sid_quantize = catalog_stage("sid_quantize", SID_QUANTIZE, ("items",))
teacher_corpus = catalog_stage("teacher_corpus", TEACHER, ("items", "samples", "sid_map"))
align_sft = catalog_stage("align_sft", ALIGN, ("items", "samples", "sid_map", "corpus"))


def reason_sft(change=None, section=None, sets=(), model_space=ins.SPACE):
    def build(root: Path, tiny_model: Path) -> StageCall:
        paths = ins.catalog(root)
        paths["model"] = ins.model(root / "in" / "model", tiny_model, space=model_space)
        if change:
            change(paths)
        return stage_call(root, "reason_sft", section or REASON, {"sft_model": paths["model"],
                          "reasoning": paths["reasoning"], "sid_map": paths["sid_map"]}, sets)
    return build


def grpo(change=None, section=None, sets=(), model_space=ins.SPACE):
    def build(root: Path, tiny_model: Path) -> StageCall:
        paths = ins.catalog(root)
        paths["model"] = ins.model(root / "in" / "model", tiny_model, space=model_space, stage="reason_sft")
        if change:
            change(paths)
        return stage_call(root, "grpo", section or GRPO, {"reasoning_model": paths["model"],
                          "reasoning": paths["reasoning"], "sid_map": paths["sid_map"]}, sets)
    return build


def evaluate(change=None, section=None, sets=(), model_space=ins.SPACE, base_model=False):
    def build(root: Path, tiny_model: Path) -> StageCall:
        paths = ins.catalog(root)
        template = tiny_model.with_name(tiny_model.name + "-base") if base_model else tiny_model  # no SID tokens
        paths["model"] = ins.model(root / "in" / "model", template, space=model_space, stage="grpo")
        if change:
            change(paths)
        return stage_call(root, "evaluate", section or EVALUATE,
                          {k: paths[k] for k in ("model", "sid_map", "items", "samples")}, sets)
    return build


def table(name: str, change) -> callable:
    """Edit the Parquet artifact ``name`` of the row's inputs."""
    return lambda paths: rewrite_table(paths[name], change)


def replace_with_folder(name: str):
    def change(paths):
        ins.remove(paths[name])
        Path(paths[name]).mkdir()
        (Path(paths[name]) / "part-0.parquet").write_bytes(b"")
    return change


def not_parquet(name: str):
    return lambda paths: Path(paths[name]).write_text("item_id,title\nI0,pen\n")


def to_file(name: str):
    def change(paths):
        ins.remove(paths[name])
        Path(paths[name]).write_text("{}")
    return change


def without(name: str):
    return lambda paths: ins.remove(paths[name])


def model_file(rel: str, text: str | None):
    """Replace (None: delete) one file of the row's model folder, as a hand edit would."""
    def change(paths):
        path = Path(paths["model"]) / rel
        path.unlink()
        if text is not None:
            path.write_text(text)
        (Path(paths["model"]) / "_MANIFEST.json").unlink()  # a folder edited by hand has no valid manifest
    return change


def space(name: str, value: str = OTHER_SPACE):
    return lambda paths: ins.set_space(paths[name], value)


def where(column: str, value, **changes):
    """Edit the rows whose ``column`` is ``value`` (the others kept as they are)."""
    return rows(edit=lambda r: {**r, **changes} if r[column] == value else r)


def leak_target(row: dict) -> dict:
    return {**row, "reasoning": f"{row['reasoning']} So the answer is {row['target_sid']}."}


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

MODEL = ("tiny_model",)

TABLE: list[Case] = [
    # -- sid_quantize ------------------------------------------------------------------------
    Case("sid_quantize-items-missing", MISSING, sid_quantize(without("items")),
         names="input items: ", says=("items.parquet does not exist",)),
    Case("sid_quantize-items-not-parquet", MISSING, sid_quantize(not_parquet("items")),
         names="items.parquet: not a readable Parquet file", error=StorageError),
    Case("sid_quantize-items-a-folder", MISSING, sid_quantize(replace_with_folder("items")),
         names="items.parquet is a folder; a items artifact is a file"),
    Case("sid_quantize-items-missing-brand", CONTRACT, sid_quantize(table("items", ins.drop_column("brand"))),
         names="items.parquet: missing column(s) ['brand']"),
    Case("sid_quantize-item-id-integers", CONTRACT,
         sid_quantize(table("items", lambda t: t.set_column(0, "item_id", pa.array(range(t.num_rows))))),
         names="items.parquet: column 'item_id' has type int64, expected string"),
    Case("sid_quantize-duplicate-item-id", CONTRACT,
         sid_quantize(table("items", where("item_id", "I7", item_id="I3"))),
         names="items.parquet row 7: duplicate item_id 'I3'"),
    Case("sid_quantize-empty-items", CONTRACT, sid_quantize(table("items", rows(keep=lambda r: False))),
         names="items.parquet: no rows"),
    Case("sid_quantize-codebooks-too-small", CONFIG, sid_quantize(section={**SID_QUANTIZE, "codebook_sizes": [2, 4]}),
         names="the catalog has 16 items but codebook_sizes [2, 4] express only 8 distinct SIDs"),
    Case("sid_quantize-previous-codebooks-missing", MISSING,
         sid_quantize(section={**SID_QUANTIZE, "incremental": {"previous_sid_map": "x"}}),
         names="sid_quantize.incremental", says=("must be set together",), error=ConfigError),
    Case("sid_quantize-typo-in-own-section", CONFIG, sid_quantize(sets=("sid_quantize.codebook_size=[4,4]",)),
         names="sid_quantize.codebook_size: unknown key (did you mean 'codebook_sizes'?)", error=ConfigError),

    # -- teacher_corpus ----------------------------------------------------------------------
    Case("teacher_corpus-sid-map-missing", MISSING, teacher_corpus(without("sid_map")),
         names="input sid_map: ", says=("sid_map.parquet does not exist",)),
    Case("teacher_corpus-samples-without-train", CONTRACT,
         teacher_corpus(table("samples", rows(keep=lambda r: r["split"] != "train"))),
         names="samples.parquet: no train samples"),
    Case("teacher_corpus-sample-split-unknown", CONTRACT,
         teacher_corpus(table("samples", where("user_id", "U2", split="training"))),
         names="samples.parquet row 2", says=("split 'training' is not one of ['train', 'valid', 'test']",)),
    Case("teacher_corpus-samples-name-unknown-items", MISMATCH,
         teacher_corpus(table("samples", where("user_id", "U1", target="I99"))),
         names="samples.parquet row 1: item(s) ['I99'] are not in the sid_map"),
    Case("teacher_corpus-sid-map-codes-disagree", CONTRACT,
         teacher_corpus(table("sid_map", where("item_id", "I4", codes=[1, 1, 1]))),
         names="sid_map.parquet row 4", says=("do not match sid",)),
    Case("teacher_corpus-sid-map-duplicate-sid", CONTRACT,
         teacher_corpus(table("sid_map", where("item_id", "I5", codes=[0, 0, 0], sid="<a_0><b_0><c_0>"))),
         names="sid_map.parquet row 5", says=("already belongs to row 0",)),
    Case("teacher_corpus-prompt-version-unknown", CONFIG,
         teacher_corpus(section={**TEACHER, "teacher": {"backend": "litellm", "api_key_env": None},
                                 "enrichment": {"prompt_version": "v9"}}),
         names="no packaged prompt version 'v9'"),
    Case("teacher_corpus-api-key-variable-unset", CONFIG,
         teacher_corpus(section={**TEACHER, "teacher": {"backend": "litellm", "api_key_env": "NOT_SET_ANYWHERE_KEY"}}),
         names="teacher.api_key_env: environment variable NOT_SET_ANYWHERE_KEY is not set",
         error=TeacherError),
    Case("teacher_corpus-key-in-extra-params", CONFIG,
         teacher_corpus(sets=(f"teacher_corpus.teacher.extra_params.api_key={SECRET}",)),
         names="teacher_corpus.teacher.extra_params.api_key: looks like a secret", error=ConfigError),

    # -- align_sft ---------------------------------------------------------------------------
    Case("align_sft-corpus-missing-messages", CONTRACT, align_sft(table("corpus", ins.drop_column("messages"))),
         names="corpus.parquet: missing column(s) ['messages']"),
    Case("align_sft-corpus-of-another-sid-space", MISMATCH, align_sft(space("corpus")),
         names="corpus", says=("corpus.parquet is of SID space sha256:bbbbbbbbb", "sid_map.parquet is of SID space",
                               "different quantization runs")),
    Case("align_sft-corpus-row-without-answer", CONTRACT,
         align_sft(table("corpus", rows(edit=lambda r: {**r, "messages": r["messages"][:-1]} if r["task"] == "sid2title"
                                        else r))),
         names="corpus.parquet row", says=("must end with a non-empty assistant message",)),
    Case("align_sft-backbone-missing", MISSING,
         align_sft(section={**TRAIN, "backbone": {"uri": "/nowhere/qwen3"}}),
         names="align_sft.backbone.uri: /nowhere/qwen3: model folder does not exist", error=ConfigError),
    Case("align_sft-bf16-on-cpu", CONFIG, align_sft(sets=("align_sft.bf16=true",)),
         names="align_sft.bf16: bf16 was requested but no GPU is visible", error=ConfigError),
    Case("align_sft-secret-in-trainer-args", CONFIG,
         align_sft(sets=(f"align_sft.trainer_args.hub_token={SECRET}",)),
         names="align_sft.trainer_args.hub_token: looks like a secret", error=ConfigError),
    Case("align_sft-typo-in-another-section", CONFIG, align_sft(sets=("ingset.preprocess.k_core=50",)),
         names="ingset: unknown key (did you mean 'ingest'?)", error=ConfigError),

    # -- reason_sft --------------------------------------------------------------------------
    Case("reason_sft-model-missing", MISSING, reason_sft(without("model")), uses=MODEL,
         names="input sft_model: ", says=("model does not exist",)),
    Case("reason_sft-model-is-a-file", MISSING, reason_sft(to_file("model")), uses=MODEL,
         names="model is a file; a model artifact is a folder"),
    Case("reason_sft-model-of-another-sid-space", MISMATCH, reason_sft(model_space=OTHER_SPACE), uses=MODEL,
         names="sft_model", says=("is of SID space sha256:bbbbbbbbb", "different quantization runs")),
    Case("reason_sft-model-without-sid-vocabulary", MISMATCH, reason_sft(model_file("sid_vocab.json", None)),
         uses=MODEL, names="model: no sid_vocab.json (not a model of this pipeline)"),
    Case("reason_sft-model-record-unreadable", CONTRACT, reason_sft(model_file("sidreasoner.json", "{not json")),
         uses=MODEL, names="model: sidreasoner.json is not a model record"),
    Case("reason_sft-reasoning-names-its-target", LEAK, reason_sft(table("reasoning", rows(edit=leak_target))),
         uses=MODEL, names="reasoning.parquet row 0", says=("the reasoning mentions the target SID",)),
    Case("reason_sft-reasoning-empty", CONTRACT, reason_sft(table("reasoning", rows(keep=lambda r: False))),
         uses=MODEL, names="reasoning.parquet: no rows"),
    Case("reason_sft-reasoning-of-another-sid-space", MISMATCH, reason_sft(space("reasoning")), uses=MODEL,
         names="reasoning", says=("is of SID space sha256:bbbbbbbbb",)),

    # -- grpo --------------------------------------------------------------------------------
    Case("grpo-model-missing", MISSING, grpo(without("model")), uses=MODEL,
         names="input reasoning_model: ", says=("model does not exist",)),
    Case("grpo-model-of-another-sid-space", MISMATCH, grpo(model_space=OTHER_SPACE), uses=MODEL,
         names="reasoning_model", says=("is of SID space sha256:bbbbbbbbb",)),
    Case("grpo-reasoning-target-unknown", MISMATCH,
         grpo(table("reasoning", rows(edit=lambda r: {**r, "target_sid": "<a_1><b_3><c_7>"}))), uses=MODEL,
         names="reasoning.parquet row 0", says=("target SID '<a_1><b_3><c_7>' is not in the sid_map catalog",)),
    Case("grpo-vllm-without-gpu", CONFIG, grpo(sets=("grpo.rollout.engine=vllm",)), uses=MODEL,
         names="grpo.rollout.engine: vllm needs a GPU", error=ConfigError),
    Case("grpo-reward-levels-mismatch", CONFIG, grpo(sets=("grpo.reward.level_rewards=[0.5, 1.0]",)), uses=MODEL,
         names="grpo.reward.level_rewards: 2 values but the sid_map SIDs have 3 levels", error=ConfigError),

    # -- evaluate ----------------------------------------------------------------------------
    Case("evaluate-model-of-another-sid-space", MISMATCH, evaluate(model_space=OTHER_SPACE), uses=MODEL,
         names="model", says=("is of SID space sha256:bbbbbbbbb", "different quantization runs")),
    Case("evaluate-sid-map-of-another-run", MISMATCH, evaluate(space("sid_map")), uses=MODEL,
         names="sid_map", says=("is of SID space sha256:bbbbbbbbb",)),
    Case("evaluate-model-without-the-sid-tokens", MISMATCH, evaluate(base_model=True), uses=MODEL,
         names="model", says=("SID token",)),
    Case("evaluate-items-missing-sid-map-items", MISMATCH,
         evaluate(table("items", rows(keep=lambda r: r["item_id"] not in ("I3", "I9")))), uses=MODEL,
         names="sid_map.parquet: 2 catalog item(s) have no row in items"),
    Case("evaluate-samples-missing-column", CONTRACT, evaluate(table("samples", ins.drop_column("history"))),
         uses=MODEL, names="samples.parquet: missing column(s) ['history']"),
    Case("evaluate-typo-in-own-section", CONFIG, evaluate(sets=("evaluate.beam_widht=4",)), uses=MODEL,
         names="evaluate.beam_widht: unknown key (did you mean 'beam_width'?)", error=ConfigError),
]


@pytest.mark.parametrize("build, uses", [
    (sid_quantize(), ("hashed_encoder",)), (teacher_corpus(), ()), (align_sft(section={**ALIGN, "max_steps": 1}), ()),
    (reason_sft(section={**REASON, "max_steps": 1}), MODEL), (grpo(), MODEL), (evaluate(), MODEL),
], ids=["sid_quantize", "teacher_corpus", "align_sft", "reason_sft", "grpo", "evaluate"])
def test_baseline_of_each_stage_succeeds(build, uses, tmp_path, tracking_uri, capsys, request):
    """Each row's failure is its one change: the unchanged inputs get through the stage."""
    call = build_with(build, tmp_path, {name: request.getfixturevalue(name) for name in uses})
    outcome = run_in_process(call, tracking_uri, capsys)
    assert outcome.exit_code == 0, outcome.message[-3000:]


def test_the_table_covers_every_stage_and_class():
    assert len({case.id for case in TABLE}) == len(TABLE)
    assert {case.id.split("-")[0] for case in TABLE} == {"sid_quantize", "teacher_corpus", "align_sft",
                                                        "reason_sft", "grpo", "evaluate"}
    assert {case.kind for case in TABLE} == {MISSING, CONTRACT, MISMATCH, LEAK, CONFIG}


@pytest.mark.parametrize("case", [case.param() for case in TABLE])
def test_bad_input_fails_clearly(case, tmp_path, tracking_uri, capsys, request):
    check(case, tmp_path, tracking_uri, capsys, request)
