"""The baselines stage: trained on the train split, ranking the catalog for every valid and test
row, as evaluate reads them."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from components.baselines import STAGE
from components.common import artifacts, storage
from components.common.config import parse_section
from components.common.errors import InputError
from components.common.stage import cli_context


def run_stage(tmp_path, inputs, section: dict, **replace: str):
    cfg = parse_section(STAGE.config, section, "baselines")
    out = tmp_path / "out"
    ctx = cli_context({}, "test", "baselines", str(out), None, "h")
    outputs = {name: str(out / kind.file) for name, kind in STAGE.outputs.items()}
    uris = {"samples": inputs.samples, "sid_map": inputs.sid_map, **replace}
    return outputs, STAGE.execute(cfg, ctx, uris, outputs)


def test_rankings_cover_every_valid_and_test_row(eval_inputs, tmp_path):
    outputs, meta = run_stage(tmp_path, eval_inputs, {"top_k": 20, "models": ["popularity", "sasrec", "sasrec_ce"],
                                                      "sasrec": {"epochs": 2},
                                                      "sasrec_ce": {"epochs": 2, "grid": {"dropout": [0.2, 0.5]}}})
    rankings = pq.read_table(outputs["rankings"]).to_pandas()
    samples = artifacts.read_samples(eval_inputs.samples)
    ranked_rows = {s.row for s in samples.rows if s.split in ("valid", "test")}
    catalog = set(artifacts.read_catalog(eval_inputs.sid_map).item_ids)
    assert meta["rankings"]["rows"] == 3 * len(ranked_rows)
    for model, group in rankings.groupby("model"):
        assert set(group["row"]) == ranked_rows, model
        assert all(len(items) == 20 and len(set(items)) == 20 and set(items) <= catalog for items in group["ranked_items"])
        assert all(list(s) == sorted(s, reverse=True) for s in group["scores"])
    popular = rankings[rankings["model"] == "popularity"]["ranked_items"]
    assert all(list(items) == list(popular.iloc[0]) for items in popular)  # the same list for everyone
    stats = storage.read_json(outputs["stats"])
    assert stats["models"]["sasrec"]["epochs_run"] == 2 and stats["rows_ranked"] == len(ranked_rows)
    tuned = stats["models"]["sasrec_ce"]  # the setting chosen on valid, and every one tried
    assert [g["dropout"] for g in tuned["grid"]] == [0.2, 0.5]
    assert tuned["chosen"] in [{k: g[k] for k in ("hidden_size", "dropout", "learning_rate")} for g in tuned["grid"]]
    ce, bce = (rankings[rankings["model"] == m].sort_values("row")["ranked_items"] for m in ("sasrec_ce", "sasrec"))
    assert [list(x) for x in ce] != [list(x) for x in bce]  # its own model, not a copy of SASRec's


def test_an_empty_train_split_is_refused(eval_inputs, tmp_path):
    table = pq.read_table(eval_inputs.samples)
    no_train = table.filter(table["split"].to_numpy() != "train")
    pq.write_table(no_train, tmp_path / "samples.parquet")
    with pytest.raises(InputError, match=r"the train split is empty; the baselines learn from it"):
        run_stage(tmp_path, eval_inputs, {"models": ["popularity"]}, samples=str(tmp_path / "samples.parquet"))
    assert not (tmp_path / "out" / "rankings.parquet").exists()
