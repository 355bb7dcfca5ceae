"""The evaluate stage end to end on the demo data with a tiny model, its bad-input errors, the
report, and the kfp component."""

from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common import artifacts, storage
from components.common.config import ConfigError, parse_section
from components.common.constrained import MissingSidTokensError
from components.common.errors import InputError
from components.common.registry import PreviousModel
from components.common.stage import cli_context
from components.common.training import backbone
from components.evaluate import STAGE
from components.evaluate.config import EvaluateConfig
from components.evaluate.report import format_metrics_table, pick_examples
from tests.evaluate.conftest import CODEBOOKS, sid_map_table
from tests.tiny_sid_model import build_sid_model

FAST = {"max_examples": 6, "beam_width": 10, "max_reasoning_tokens": 6, "batch_size": 4,
        "reasoning_batch_size": 3, "report_users": 3}


def run_stage(tmp_path: Path, inputs, overrides: dict | None = None, baselines: bool = True, **replace: str):
    """Evaluate ``inputs`` (with the baselines' rankings unless ``baselines`` is false)."""
    cfg = parse_section(EvaluateConfig, {**FAST, **(overrides or {})}, "evaluate")
    out = tmp_path / "out"
    ctx = cli_context({"storage": {"cache_uri": str(tmp_path / "cache")}}, "test", "evaluate", str(out), None, "h")
    uris = {"model": inputs.model, "sid_map": inputs.sid_map, "items": inputs.items, "samples": inputs.samples,
            **({"rankings": inputs.rankings} if baselines else {}), **replace}
    outputs = {name: str(out / kind.file) for name, kind in STAGE.outputs.items()}
    meta = STAGE.execute(cfg, ctx, uris, outputs)
    return outputs, meta


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.hits, self.text = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(attrs["src"])
        if tag == "li" and attrs.get("class") == "hit":
            self.hits += 1

    def handle_data(self, data):
        self.text.append(data)


def test_stage_end_to_end(eval_inputs, tmp_path):
    outputs, meta = run_stage(tmp_path, eval_inputs)
    metrics = pq.read_table(outputs["metrics"]).to_pandas()
    assert set(metrics["model"]) == {"sidreasoner", "sasrec", "sasrec_ce", "popularity"}
    assert set(metrics[metrics["model"] == "sidreasoner"]["mode"]) == {"thinking", "direct"}
    assert sorted(metrics["k"].unique()) == [1, 3, 5, 10]
    assert set(metrics["split"]) == {"test"} and set(metrics["n"]) == {6}
    assert (metrics["valid_rate"] == 1.0).all()
    assert metrics["hr"].between(0, 1).all() and (metrics["ndcg"] <= metrics["hr"] + 1e-12).all()

    predictions = pq.read_table(outputs["predictions"]).to_pandas()
    sid_map = pq.read_table(eval_inputs.sid_map).to_pandas()
    sid_of = dict(zip(sid_map["item_id"], sid_map["sid"]))
    ours = predictions[predictions["model"] == "sidreasoner"]
    assert len(ours) == 12 and meta["predictions"]["rows"] == 12 + 3 * 6
    for row in ours.itertuples():
        assert len(row.ranked_sids) == 10  # 10 beams, every one a catalog SID of its item
        assert [sid_of[i] for i in row.ranked_items] == list(row.ranked_sids)
        assert list(row.scores) == sorted(row.scores, reverse=True)
        assert isinstance(row.reasoning, str) == (row.mode == "thinking")
    # the same rows for every model
    assert len({tuple(sorted(g["row"])) for _, g in predictions.groupby(["model", "mode"])}) == 1

    stats = storage.read_json(outputs["stats"])
    assert stats["decoding"]["direct"]["valid_rate"] == 1.0
    assert 0 <= stats["decoding"]["thinking"]["reasoning_closed_rate"] <= 1
    # without the ablation: the model against both SASRecs, and its two modes against each other
    compared = {(c["model"], c["mode"], c["vs_model"]) for c in stats["comparisons"]}
    assert compared == {("sidreasoner", m, vs) for m in ("thinking", "direct") for vs in ("sasrec", "sasrec_ce")} | {
        ("sidreasoner", "thinking", "sidreasoner")}
    assert {(c["metric"], c["k"], c["n"], c["bootstrap_samples"]) for c in stats["comparisons"]} == {
        ("hr", 10, 6, 1000), ("ndcg", 10, 6, 1000)}
    assert not stats["ablation"]["align_sft"]["scored"] and stats["grpo"] is None

    page = Path(outputs["report"]).read_text()
    parser = _Collect()
    parser.feed(page)
    assert parser.tags.count("table") >= 2 and parser.tags.count("h3") == 3
    png = base64.b64decode(parser.imgs[0].removeprefix("data:image/png;base64,"))
    assert png.startswith(b"\x89PNG")
    assert not any(src.startswith("http") for src in parser.imgs)  # self-contained
    shown = predictions[predictions["row"].isin(pick_examples(predictions, "sidreasoner", 3))]
    assert parser.hits == int((shown["rank"] < 10).sum())  # every hit of a shown user is marked
    text = "".join(parser.text)
    assert "sasrec" in text and "popularity" in text and "History" in text
    assert "Paired differences" in text and "sidreasoner thinking vs sasrec_ce" in text and "GRPO" not in text

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser:  # render it in a real headless browser too when one is installed
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                              Path(outputs["report"]).resolve().as_uri()], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        assert "Sample users" in dom and dom.count("<h3>") == 3 and "data:image/png;base64," in dom

    table = format_metrics_table(metrics).splitlines()
    assert table[0].split()[:4] == ["model", "mode", "split", "n"] and table[0].endswith("HR@10 vs sasrec")
    assert [line.split()[0] for line in table[2:]] == ["sidreasoner", "sidreasoner", "sasrec", "sasrec_ce",
                                                       "popularity"]
    assert table[2].startswith("sidreasoner  thinking") and table[4].split()[1] == "-"  # a baseline has no mode
    hr10 = metrics[metrics["k"] == 10].set_index(["model", "mode"])["hr"]
    assert table[3].split()[-1] == f"{hr10['sidreasoner', 'direct'] - hr10['sasrec', 'direct']:+.4f}"


def test_wider_beam_reports_more_k_and_both_splits(eval_inputs, tmp_path):
    outputs, _ = run_stage(tmp_path, eval_inputs, {"beam_width": 20, "modes": ["direct"], "max_examples": 3,
                                                   "splits": ["valid", "test"]})
    metrics = pq.read_table(outputs["metrics"]).to_pandas()
    assert sorted(metrics["k"].unique()) == [1, 3, 5, 10, 20]
    assert set(metrics["split"]) == {"valid", "test", "all"}
    assert metrics[metrics["split"] == "all"]["n"].iloc[0] == 6


def test_beam_below_largest_k_is_a_config_error():
    with pytest.raises(ConfigError, match="beam_width 5 is below the largest K 10"):
        parse_section(EvaluateConfig, {"beam_width": 5, "ks": [1, 5, 10]}, "evaluate")
    with pytest.raises(ConfigError, match="beam_width"):
        parse_section(EvaluateConfig, {"beam_width": 51}, "evaluate")
    assert parse_section(EvaluateConfig, {"beam_width": 50}, "evaluate").effective_ks() == [1, 3, 5, 10, 20, 50]
    assert parse_section(EvaluateConfig, {"beam_width": 5}, "evaluate").effective_ks() == [1, 3, 5]
    with pytest.raises(ConfigError, match="CUDA only"):
        parse_section(EvaluateConfig, {"engine": "vllm", "device": "cpu"}, "evaluate")


def test_checkpoint_lacking_sid_tokens_fails_before_decoding(eval_inputs, tmp_path):
    plain = backbone.build_tiny_backbone(tmp_path / "plain", ["pens and paper"] * 10, vocab_size=280)
    with pytest.raises(MissingSidTokensError, match="lacks"):
        run_stage(tmp_path, eval_inputs, model=str(plain))
    assert not (tmp_path / "out" / "metrics.parquet").exists()


def test_empty_test_split_fails(eval_inputs, tmp_path):
    samples = pq.read_table(eval_inputs.samples)
    no_test = samples.filter(pa.compute.not_equal(samples["split"], "test"))
    pq.write_table(no_test, tmp_path / "samples.parquet")
    with pytest.raises(InputError, match="'test' split is empty"):
        run_stage(tmp_path, eval_inputs, samples=str(tmp_path / "samples.parquet"))


def test_collided_sids_and_missing_columns_fail(eval_inputs, tmp_path):
    table = pq.read_table(eval_inputs.sid_map)
    sids = table["sid"].to_pylist()
    codes = table["codes"].to_pylist()
    sids[1], codes[1] = sids[0], codes[0]
    collided = table.set_column(2, "sid", pa.array(sids)).set_column(1, "codes", pa.array(codes, pa.list_(pa.int32())))
    pq.write_table(collided, tmp_path / "collided.parquet")
    with pytest.raises(InputError, match=r"collided\.parquet row 1 .*SID \S+ already belongs to row 0"):
        run_stage(tmp_path, eval_inputs, sid_map=str(tmp_path / "collided.parquet"))
    pq.write_table(table.drop(["status"]), tmp_path / "nostatus.parquet")
    with pytest.raises(InputError, match=r"missing column\(s\) \['status'\]"):
        run_stage(tmp_path, eval_inputs, sid_map=str(tmp_path / "nostatus.parquet"))


def test_a_model_of_another_sid_space_is_refused_before_decoding(eval_inputs, tmp_path):
    """The model knows every SID token, but was trained on another quantization run's SIDs."""
    model = tmp_path / "model"
    shutil.copytree(eval_inputs.model, model)
    artifacts.write_model_record(str(model), artifacts.ModelRecord(sid_space="sha256:" + "a" * 64,
                                                                   sid_map_digest=None, stage="grpo"),
                                 artifacts.model_sid_vocabulary(eval_inputs.model))
    table = artifacts.with_sid_space(pq.read_table(eval_inputs.sid_map), "sha256:" + "b" * 64)
    pq.write_table(table, tmp_path / "sid_map.parquet")
    with pytest.raises(InputError, match=r"sid_map .*sid_map\.parquet is of SID space sha256:bbbbbbbb.*, but model "
                                         r".*model is of SID space sha256:aaaaaaaa.*different quantization runs"):
        run_stage(tmp_path, eval_inputs, model=str(model), sid_map=str(tmp_path / "sid_map.parquet"))
    assert not (tmp_path / "out").exists()


def test_retired_items_leave_the_catalog_but_stay_in_histories(eval_inputs, tmp_path):
    samples = pq.read_table(eval_inputs.samples).to_pandas()
    first_history_item = samples[samples["split"] == "test"]["history"].iloc[0][0]
    items = pq.read_table(eval_inputs.sid_map)["item_id"].to_pylist()
    pq.write_table(sid_map_table(items, {first_history_item: "retired"}), tmp_path / "sid_map.parquet")
    outputs, _ = run_stage(tmp_path, eval_inputs, {"modes": ["direct"]}, baselines=False,
                           sid_map=str(tmp_path / "sid_map.parquet"))
    predictions = pq.read_table(outputs["predictions"]).to_pandas()
    assert not any(first_history_item in ranked for ranked in predictions["ranked_items"])
    assert storage.read_json(outputs["stats"])["catalog_items"] == len(items) - 1


def _previous(path: Path, model_uri: str | None) -> str:
    previous = PreviousModel(found=True, reason="test", registered_model="m", version="4", model_uri=model_uri,
                             metric="ndcg@10/thinking/test", metric_value=0.5) if model_uri else \
        PreviousModel(found=False, reason="no alias yet")
    previous.write(str(path))
    return str(path)


def test_a_scheduled_run_scores_the_production_model_on_the_same_rows(eval_inputs, tmp_path):
    production = build_sid_model(tmp_path / "production", CODEBOOKS, seed=9)
    previous = _previous(tmp_path / "previous.json", str(production))
    outputs, _ = run_stage(tmp_path, eval_inputs, baselines=False, previous=previous)
    metrics = pq.read_table(outputs["metrics"]).to_pandas()
    assert set(metrics["model"]) == {"sidreasoner", "production"}
    assert set(metrics[metrics["model"] == "production"]["mode"]) == {"thinking", "direct"}
    predictions = pq.read_table(outputs["predictions"]).to_pandas()
    rows = {model: sorted(g["row"]) for model, g in predictions.groupby("model")}
    assert rows["production"] == rows["sidreasoner"] and len(rows["production"]) == 12
    # a different model: its own rankings, not a copy of the model under test's
    ours, theirs = (predictions[predictions["model"] == m].sort_values(["mode", "row"]) for m in ("sidreasoner",
                                                                                                  "production"))
    assert [list(x) for x in ours["ranked_sids"]] != [list(x) for x in theirs["ranked_sids"]]
    info = storage.read_json(outputs["stats"])["production"]
    assert info["scored"] and info["version"] == "4" and set(info["decoding"]) == {"thinking", "direct"}


def test_new_items_the_production_model_cannot_name_count_as_its_misses(eval_inputs, tmp_path):
    """Items added since production was trained may use codes its vocabulary lacks (here every
    item with first code 3): it is scored over the SIDs it can name."""
    production = build_sid_model(tmp_path / "production", (3, 6, 6), seed=9)
    previous = _previous(tmp_path / "previous.json", str(production))
    outputs, _ = run_stage(tmp_path, eval_inputs, {"modes": ["direct"]}, baselines=False, previous=previous)
    predictions = pq.read_table(outputs["predictions"]).to_pandas()
    theirs = predictions[predictions["model"] == "production"]
    assert len(theirs) == 6 and all(len(sids) == 10 for sids in theirs["ranked_sids"])
    assert not any(sid.startswith("<a_3>") for sids in theirs["ranked_sids"] for sid in sids)
    sid_map = pq.read_table(eval_inputs.sid_map).to_pandas()
    info = storage.read_json(outputs["stats"])["production"]
    assert info["scored"] and info["unnameable_items"] == int(sid_map["sid"].str.startswith("<a_3>").sum()) > 0


@pytest.mark.parametrize("case", ["first run", "switched off", "other vocabulary"])
def test_the_production_model_is_not_scored_when_it_cannot_or_should_not_be(eval_inputs, tmp_path, case):
    model_uri = None if case == "first run" else str(build_sid_model(tmp_path / "production", CODEBOOKS, seed=9))
    if case == "other vocabulary":  # SID tokens of this catalog missing from the production model
        model_uri = str(backbone.build_tiny_backbone(tmp_path / "plain", ["pens and paper"] * 10, vocab_size=280))
    overrides = {"modes": ["direct"], "score_production": case != "switched off"}
    outputs, _ = run_stage(tmp_path, eval_inputs, overrides, baselines=False,
                           previous=_previous(tmp_path / "previous.json", model_uri))
    assert set(pq.read_table(outputs["metrics"]).to_pandas()["model"]) == {"sidreasoner"}
    info = storage.read_json(outputs["stats"])["production"]
    assert not info["scored"]
    assert {"first run": "no production model yet", "switched off": "score_production is off",
            "other vocabulary": "can name 0 of this catalog's"}[case] in info["reason"]


def test_model_name_must_not_be_another_models_name():
    with pytest.raises(ConfigError, match="names another model"):
        parse_section(EvaluateConfig, {"model_name": "production"}, "evaluate")


def test_component_compiles_with_typed_artifacts(tmp_path):
    from kfp import compiler

    from pipeline.dag import build_component

    path = tmp_path / "evaluate.yaml"
    compiler.Compiler().compile(build_component(STAGE, "registry/evaluate:tag"), str(path))
    spec = path.read_text()
    for name, kind in (("model", "system.Model"), ("sid_map", "system.Dataset"), ("report", "system.HTML"),
                       ("metrics", "system.Dataset"), ("stats", "system.Artifact")):
        assert name in spec and kind in spec
    assert "registry/evaluate:tag" in spec


def test_cli_help_and_table_from_an_arrow_table(capsys):
    with pytest.raises(SystemExit) as exit_info:
        STAGE.main(["--help"])
    assert exit_info.value.code == 0
    assert "--sid-map" in capsys.readouterr().out
    metrics = pa.table({"model": ["popularity", "sidreasoner"], "mode": ["direct", "direct"],
                        "split": ["test", "test"], "k": [5, 5], "hr": [0.25, 0.5], "ndcg": [0.125, 0.3],
                        "valid_rate": [1.0, 1.0], "n": [4, 4], "latency_ms": [0.1, 12.0]})
    lines = format_metrics_table(metrics).splitlines()
    assert lines[2].split() == ["sidreasoner", "direct", "test", "4", "0.5000", "0.3000", "100.0%", "12.0"]
    assert lines[3].split()[:2] == ["popularity", "-"]


def _grpo_stats(path: Path) -> str:
    """A grpo stats artifact: the per-step table and its summary, as the grpo stage writes them."""
    from components.grpo.report import summarize

    steps = [{"step": step, "reward": 0.1 * step, "hit_rate": 0.05 * step, "reasoning_tokens": 60.0 - 5 * step,
              "reasoning_closed_rate": 0.5, "kl": 0.001 * step} for step in range(1, 5)]
    storage.write_json(str(path), {"global_step": 4, "summary": summarize(steps), "steps": steps})
    return str(path)


def test_the_ablation_scores_each_stage_in_its_mode_on_the_same_rows(eval_inputs, tmp_path):
    align = build_sid_model(tmp_path / "align", CODEBOOKS, seed=6)
    reason = build_sid_model(tmp_path / "reason", CODEBOOKS, seed=7)
    outputs, _ = run_stage(tmp_path, eval_inputs, {"ablation": True, "bootstrap_samples": 300},
                           align_model=str(align), reason_model=str(reason),
                           grpo_stats=_grpo_stats(tmp_path / "grpo_stats.json"))
    metrics = pq.read_table(outputs["metrics"]).to_pandas()
    assert set(zip(metrics["model"], metrics["mode"])) == {
        ("sidreasoner", "thinking"), ("sidreasoner", "direct"), ("align_sft", "direct"), ("reason_sft", "thinking"),
        ("sasrec", "direct"), ("sasrec_ce", "direct"), ("popularity", "direct")}
    assert set(metrics["n"]) == {6} and len(metrics) == 7 * 4  # one row per (model, mode, split, K)
    predictions = pq.read_table(outputs["predictions"]).to_pandas()
    assert len({tuple(sorted(g["row"])) for _, g in predictions.groupby(["model", "mode"])}) == 1
    reasoning = predictions[predictions["model"] == "reason_sft"]["reasoning"]
    assert all(isinstance(r, str) for r in reasoning)

    stats = storage.read_json(outputs["stats"])
    for name, mode in (("align_sft", "direct"), ("reason_sft", "thinking")):
        info = stats["ablation"][name]
        assert info["scored"] and info["mode"] == mode and set(info["decoding"]) == {mode}
        assert stats["decoding_seconds"][name] > 0
    assert stats["grpo"]["logged_steps"] == 4
    assert stats["grpo"]["summary"]["reward_vs_reasoning_tokens_spearman"] == pytest.approx(-1)
    by_pair = {(c["model"], c["mode"], c["vs_model"], c["vs_mode"], c["metric"]): c for c in stats["comparisons"]}
    assert {("reason_sft", "thinking", "align_sft", "direct"), ("sidreasoner", "thinking", "reason_sft", "thinking"),
            ("sidreasoner", "direct", "align_sft", "direct")} <= {key[:4] for key in by_pair}
    values = metrics[metrics["k"] == 10].set_index(["model", "mode"])
    for (model, mode, vs_model, vs_mode, metric), c in by_pair.items():
        assert c["value"] == pytest.approx(values.at[(model, mode), metric])
        assert c["vs_value"] == pytest.approx(values.at[(vs_model, vs_mode), metric])
        assert c["difference"] == pytest.approx(c["value"] - c["vs_value"]) and c["ci_low"] <= c["ci_high"]
        assert (c["n"], c["bootstrap_samples"], c["k"]) == (6, 300, 10)

    import mlflow

    client = mlflow.MlflowClient(mlflow.get_tracking_uri())  # where the stage logged
    run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                             filter_string="tags.`sidreasoner.stage` = 'evaluate'", order_by=["start_time DESC"])[0]
    key = "compare.test.reason_sft_thinking-vs-align_sft_direct.hr_at_10"
    assert run.data.metrics[f"{key}.difference"] == pytest.approx(by_pair[("reason_sft", "thinking", "align_sft",
                                                                          "direct", "hr")]["difference"])

    page = Path(outputs["report"]).read_text()
    parser = _Collect()
    parser.feed(page)
    text = "".join(parser.text)
    assert "reason_sft thinking vs align_sft direct" in text and "sidreasoner thinking vs reason_sft thinking" in text
    assert "GRPO: reward and reasoning length per step" in text
    assert "reasoning length over the steps -1.00" in text  # reasoning shortens as reward rises, step by step
    for step in range(1, 5):  # one table row per step: step, reward, hit rate, reasoning tokens, ...
        assert f"<tr><td>{step}</td><td>{0.1 * step:.4g}</td><td>{0.05 * step:.4g}</td><td>{60 - 5 * step}</td>" in page
    assert len(parser.imgs) == 2 and all(src.startswith("data:image/png;base64,") for src in parser.imgs)


@pytest.mark.parametrize("case", ["ablation off", "no stage models given"])
def test_the_ablation_scores_only_what_it_should(eval_inputs, tmp_path, case):
    align = build_sid_model(tmp_path / "align", CODEBOOKS, seed=6)
    given = {"align_model": str(align)} if case == "ablation off" else {}
    outputs, _ = run_stage(tmp_path, eval_inputs, {"ablation": case != "ablation off", "modes": ["direct"]},
                           baselines=False, **given)
    assert set(pq.read_table(outputs["metrics"]).to_pandas()["model"]) == {"sidreasoner"}
    ablation = storage.read_json(outputs["stats"])["ablation"]
    assert not ablation["align_sft"]["scored"] and not ablation["reason_sft"]["scored"]
    assert ablation["align_sft"]["reason"] == {"ablation off": "evaluate.ablation is off",
                                               "no stage models given": "no align_model input"}[case]


def test_a_grpo_stats_without_steps_is_refused_before_decoding(eval_inputs, tmp_path):
    storage.write_json(str(tmp_path / "stats.json"), {"global_step": 3})
    with pytest.raises(InputError, match=r"grpo_stats .*stats\.json: no per-step table"):
        run_stage(tmp_path, eval_inputs, {"ablation": True}, grpo_stats=str(tmp_path / "stats.json"))
    assert not (tmp_path / "out" / "metrics.parquet").exists()


def test_comparison_k_must_be_reported():
    with pytest.raises(ConfigError, match=r"comparison_ks \[20\] are not among the reported K"):
        parse_section(EvaluateConfig, {"comparison_ks": [20]}, "evaluate")
    assert parse_section(EvaluateConfig, {}, "evaluate").effective_comparison_ks() == [10]
    assert parse_section(EvaluateConfig, {"beam_width": 5}, "evaluate").effective_comparison_ks() == [5]
    assert parse_section(EvaluateConfig, {"comparison_ks": [10, 5]}, "evaluate").effective_comparison_ks() == [5, 10]
    for name in ("align_sft", "reason_sft"):
        with pytest.raises(ConfigError, match="names another model"):
            parse_section(EvaluateConfig, {"model_name": name}, "evaluate")


@pytest.mark.parametrize("ablation", [True, False])
def test_the_dag_wires_the_stage_models_only_for_the_ablation(tmp_path, ablation):
    import yaml

    from pipeline import cli

    path = tmp_path / "demo.yaml"
    assert cli.main(["compile", "--config", "demo", "--set", f"evaluate.ablation={str(ablation).lower()}",
                     "--out", str(path)]) == 0
    task = next(yaml.safe_load_all(path.read_text()))["root"]["dag"]["tasks"]["evaluate"]
    wired = {name: spec["taskOutputArtifact"]["producerTask"] for name, spec in task["inputs"]["artifacts"].items()}
    stage_inputs = {"align_model": "align-sft", "reason_model": "reason-sft", "grpo_stats": "grpo"}
    if ablation:
        assert stage_inputs.items() <= wired.items()
        assert {"align-sft", "reason-sft"} <= set(task["dependentTasks"])
    else:
        assert not set(stage_inputs) & set(wired) and "align-sft" not in task["dependentTasks"]
