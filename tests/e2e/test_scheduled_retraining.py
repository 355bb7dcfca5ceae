"""Two scheduled runs of the demo profile on a catalog that changed in between: the second finds the
first through the MLflow registry, keeps its SIDs, warm-starts from its model, and is promoted only
if better; each ends with recommendations by the model it promoted (or none, saying why), and
``mlflow models serve`` answers with the registered production model."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from components.common import artifacts, lineage, registry, storage
from components.common.artifacts import model_sid_vocabulary as sid_vocabulary
from components.ingest.demo_data import write_demo_data
from pipeline import cli
from pipeline.lineage import collect, render
from tests.conftest import stop
from tests.e2e.conftest import FAST, MODEL, run_demo
from tests.serving.test_server import post, start_server

#: The module's fixtures run the pipeline twice (the session's first run, unless test_pipeline_run
#: ran it already, and the second; each ends with packaging, a serving check and recommendations)
#: before the first test; a model server starts later.
pytestmark = pytest.mark.timeout(1800)


def _read(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def changed_catalog(v1: Path, out: Path) -> tuple[set[str], set[str]]:
    """v1 minus ten items (and their reviews) plus a new product line bought by new users."""
    meta, reviews = _read(v1 / "meta.json.gz"), _read(v1 / "reviews.json.gz")
    removed = {m["asin"] for m in meta[40:50]}
    extra = out.parent / "extra"
    write_demo_data(str(extra), n_items=40, n_users=150, seed=11)
    new_meta = [{**m, "asin": "N" + m["asin"][1:]} for m in _read(extra / "meta.json.gz")]
    new_reviews = [{**r, "asin": "N" + r["asin"][1:], "reviewerID": "V" + r["reviewerID"][1:]}
                   for r in _read(extra / "reviews.json.gz")]
    _write(out / "meta.json.gz", [m for m in meta if m["asin"] not in removed] + new_meta)
    _write(out / "reviews.json.gz", [r for r in reviews if r["asin"] not in removed] + new_reviews)
    return removed, {m["asin"] for m in new_meta}


@pytest.fixture(scope="module")
def runs(first_run, demo_store, shared_settings, demo_data):
    removed, added = changed_catalog(demo_data, demo_store / "catalog-v2")
    second = run_demo(demo_store / "run2", demo_store / "catalog-v2", [*FAST, *shared_settings])
    return {"first": first_run, "second": second, "removed": removed, "added": added,
            "tracking": f"sqlite:///{demo_store / 'mlflow.db'}"}


def _sid_map(record: dict) -> pd.DataFrame:
    return pd.read_parquet(record["stages"]["sid_quantize"]["sid_map"]["uri"]).set_index("item_id")


def test_first_run_starts_fresh_and_becomes_production(runs):
    first = runs["first"]
    assert first["stats"]["previous_model"]["found"] is False
    decision = first["stats"]["promote"]
    assert decision["promoted"] is True and decision["version"] == "1"
    assert "first model" in decision["reason"]


def test_second_run_finds_production_through_mlflow(runs):
    previous = runs["second"]["stats"]["previous_model"]
    assert previous["found"] is True and previous["version"] == "1"
    assert previous["sid_map_uri"] == runs["first"]["stages"]["sid_quantize"]["sid_map"]["uri"]
    assert previous["model_uri"] == runs["first"]["stages"]["grpo"]["model"]["uri"]


def test_sids_are_kept_new_items_get_new_ones_and_removed_ones_retire(runs):
    before, after = _sid_map(runs["first"]), _sid_map(runs["second"])
    assert after["sid"].is_unique
    kept = before.index.intersection(after.index[after["status"] != "retired"])
    assert len(kept) > 0 and (after.loc[kept, "sid"] == before.loc[kept, "sid"]).all()
    retired = after.index[after["status"] == "retired"]
    assert set(runs["removed"]) & set(before.index) <= set(retired)
    assert (after.loc[retired, "sid"] == before.loc[retired, "sid"]).all()  # kept, never reused
    new = after.index[after["status"] == "new"]
    assert len(new) > 0 and set(new) <= runs["added"]
    assert not set(after.loc[new, "sid"]) & set(before["sid"])
    counts = runs["second"]["stats"]["sid_quantize"]["incremental"]
    assert counts["kept"] == len(kept) and counts["new"] == len(new) and counts["retired"] == len(retired)


def test_training_warm_starts_from_the_production_model(runs):
    import mlflow

    mlflow.set_tracking_uri(runs["tracking"])
    chain = collect(runs["second"]["run_id"])
    align = next(s for s in chain["stages"] if s.stage == "align_sft")
    assert runs["first"]["stages"]["grpo"]["model"]["uri"] in align.facts["sidreasoner.warm_start_from"]
    first_vocab = sid_vocabulary(runs["first"]["stages"]["grpo"]["model"]["uri"])
    second_vocab = sid_vocabulary(runs["second"]["stages"]["grpo"]["model"]["uri"])
    assert set(first_vocab) <= set(second_vocab)  # no SID token of the warm-started model disappears


def test_the_second_run_scores_production_on_its_own_test_rows(runs):
    def metrics(record: dict) -> pd.DataFrame:
        return pd.read_parquet(record["stages"]["evaluate"]["metrics"]["uri"])

    assert "production" not in set(metrics(runs["first"])["model"])  # nothing to compare with yet
    second = metrics(runs["second"])
    ours, production = (second[second["model"] == name].set_index(["mode", "split", "k"])
                        for name in ("sidreasoner", "production"))
    assert set(production.index) == set(ours.index) and (production["n"] == ours["n"]).all()
    decision = runs["second"]["stats"]["promote"]
    on_rows = production.loc[("thinking", "test", 10), "ndcg"]  # retrain's defaults: ndcg@10/thinking/test
    assert decision["production_before"]["value_on_these_rows"] == pytest.approx(on_rows)
    assert "on this run's rows" in decision["reason"]
    import mlflow

    mlflow.set_tracking_uri(runs["tracking"])
    promote = next(s for s in collect(runs["second"]["run_id"])["stages"] if s.stage == "promote")
    assert float(promote.facts["production_score"]) == pytest.approx(on_rows, abs=1e-4)  # shown rounded


def test_promotion_decision_matches_the_registry(runs):
    import mlflow

    mlflow.set_tracking_uri(runs["tracking"])
    decision = runs["second"]["stats"]["promote"]
    production = registry.production_version(MODEL, "production")
    if decision["promoted"]:
        assert str(production.version) == decision["version"] == "2"
    else:
        assert str(production.version) == "1" and "production kept" in decision["reason"]
    parent = mlflow.MlflowClient().get_run(runs["second"]["mlflow"]["parent_run_id"])
    assert parent.data.tags[registry.TAG_PROMOTION].startswith("promoted" if decision["promoted"] else "not promoted")


def test_lineage_from_the_registered_model_back_to_the_catalog(runs):
    import mlflow

    mlflow.set_tracking_uri(runs["tracking"])
    chain = collect(f"models:/{MODEL}@production")
    assert chain["model"]["name"] == MODEL and "production" in chain["model"]["aliases"]
    stages = [s.stage for s in chain["stages"]]
    assert stages[:3] == ["recommend", "promote", "evaluate"] and stages[-2:] == ["ingest", "previous_model"]
    produced = chain["produced_by"]
    for record in chain["stages"]:  # every input was produced inside the run, except the raw catalog
        for artifact in record.inputs:
            assert record.stage == "ingest" or artifact.digest in produced, (record.stage, artifact.name)
    ingest = next(s for s in chain["stages"] if s.stage == "ingest")
    assert {a.name for a in ingest.inputs} == {"raw_reviews", "raw_meta"}
    text = render(chain)
    assert f"model {MODEL} v" in text and "sidreasoner.catalog_digest" in text


# ----------------------------------------------------------------------------------------------
# Serving and batch recommendations
# ----------------------------------------------------------------------------------------------


def _recommendations(record: dict) -> pd.DataFrame:
    return pd.read_parquet(record["stages"]["recommend"]["recommendations"]["uri"])


def test_each_run_ends_with_recommendations_by_the_model_it_promoted_or_none(runs):
    for name in ("first", "second"):
        record = runs[name]
        decision, stats = record["stats"]["promote"], record["stats"]["recommend"]
        table = _recommendations(record)
        meta = artifacts.schema_metadata(
            storage.read_parquet_schema(record["stages"]["recommend"]["recommendations"]["uri"]))
        assert stats["recommended"] is decision["promoted"]
        if not decision["promoted"]:  # production kept: no recommendations, and the outputs say why
            assert table.empty and meta["sidreasoner.recommended"] == "false"
            assert stats["reason"] == f"promotion refused: {decision['reason']}"
            continue
        assert meta["sidreasoner.model_version"] == decision["version"] and meta["sidreasoner.recommended"] == "true"
        assert meta["sidreasoner.model_digest"] == record["stages"]["grpo"]["model"]["metadata"]["digest"]
        assert meta["sidreasoner.sid_map_digest"] == record["stages"]["sid_quantize"]["sid_map"]["metadata"]["digest"]
        assert len(table) == 8 and (table["item_ids"].map(len) == 10).all()
        # the output joins back to the run's catalog snapshot: live items, their titles and SIDs
        items = pd.read_parquet(record["stages"]["ingest"]["items"]["uri"]).set_index("item_id")
        sid_map = _sid_map(record)
        live = sid_map[sid_map["status"] != "retired"]
        exploded = table.explode(["item_ids", "titles", "sids"])
        assert exploded["item_ids"].isin(live.index).all()
        assert (exploded["titles"].to_numpy() == items.loc[exploded["item_ids"], "title"].to_numpy()).all()
        assert (exploded["sids"].to_numpy() == live.loc[exploded["item_ids"], "sid"].to_numpy()).all()
    assert runs["first"]["stats"]["promote"]["promoted"]


def test_the_registered_production_model_serves_over_http(runs, tmp_path):
    """What `make demo` leaves: `sidreasoner serve --config demo` (mlflow models serve of
    models:/NAME@production from the profile's store) answers with item ids; bad requests get 400s."""
    _use_store(runs)
    production = registry.production_version(MODEL, "production")
    record = runs["second"] if runs["second"]["stats"]["promote"]["promoted"] else runs["first"]
    assert str(production.version) == record["stats"]["promote"]["version"]
    sample = pd.read_parquet(record["stages"]["ingest"]["samples"]["uri"]).iloc[-1]
    proc, url = start_server(f"models:/{MODEL}@production", tmp_path / "server.log",
                             "--tracking-uri", runs["tracking"])
    try:
        status, body = post(url, {"dataframe_records": [{"user_id": sample["user_id"],
                                                         "history": list(sample["history"])}], "params": {"k": 5}})
        assert status == 200, body
        (row,) = body["predictions"]
        assert row["user_id"] == sample["user_id"] and len(row["item_ids"]) == 5
        items = pd.read_parquet(record["stages"]["ingest"]["items"]["uri"]).set_index("item_id")
        assert row["titles"] == list(items.loc[row["item_ids"], "title"])
        status, body = post(url, {"dataframe_records": [{"history": ["NOT-AN-ITEM"]}]})
        assert status == 400 and "history[0]: 1 item id(s) not in the catalog: 'NOT-AN-ITEM'" in body["message"]
    finally:
        stop(proc)


def test_serve_takes_the_model_and_store_from_the_profile(runs):
    import argparse

    args = argparse.Namespace(config="demo", set=[f"tracking.uri={runs['tracking']}",
                                                  f"retrain.registered_model={MODEL}"],
                              model_uri=None, tracking_uri=None, host="127.0.0.1", port=5001, workers=1,
                              serving=["engine=transformers"])
    uri, command, env = cli.serve_command(args)
    assert uri == f"models:/{MODEL}@production" and command[command.index("-m", 3) + 1] == uri
    assert env["MLFLOW_TRACKING_URI"] == runs["tracking"] and json.loads(env["SERVING_MODEL_CONFIG"]) == {
        "engine": "transformers"}


def test_mlflow_walks_model_run_datasets_on_its_own(runs):
    """The registered version is the grpo stage's LoggedModel: an output of that run, its metrics
    linked to the dataset it trained on and the promotion score to the samples it was measured on;
    the experiment opens as model training."""
    import mlflow

    _use_store(runs)
    client = mlflow.MlflowClient()
    version = registry.production_version(MODEL, "production")
    model = mlflow.get_logged_model(version.source.removeprefix("models:/"))
    run = client.get_run(model.source_run_id)
    assert run.data.tags[lineage.TAG_STAGE] == "grpo" and model.name == "grpo"
    assert model.model_id in {o.model_id for o in run.outputs.model_outputs}
    datasets = {(m.key, m.dataset_name) for m in model.metrics}
    assert ("global_step", "reasoning") in datasets and ("thinking.test.ndcg_at_10", "samples") in datasets
    run_inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    linked = {m.dataset_name: m.dataset_digest for m in model.metrics if m.dataset_name == "reasoning"}
    assert linked["reasoning"] == run_inputs["reasoning"]  # the UI's link resolves to the run's input
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[lineage.TAG_EXPERIMENT_KIND] == "custom_model_development"


def _use_store(runs: dict) -> None:
    import mlflow

    mlflow.set_tracking_uri(runs["tracking"])
