"""The ``recommend`` stage on a CPU: top-K live items for every active user by the promoted model,
joined back to the catalog, with lineage; none, saying why, when promotion was refused."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from components.common import artifacts, storage
from components.common.config import ConfigError, parse_section
from components.common.decoding import decode_all
from components.common.errors import InputError
from components.common.serving import ServedCatalog, current_histories, trained_history_length
from components.common.stage import cli_context
from components.recommend import STAGE
from components.recommend.tables import USERS_SCHEMA


def decision(eval_inputs, promoted: bool = True, **changes) -> dict:
    return {"promoted": promoted, "reason": "beats production" if promoted else "does not beat production version 3",
            "registered_model": "m", "version": "4" if promoted else None,
            "model_uri": "models:/m/4" if promoted else None, "model_digest": storage.digest(eval_inputs.model),
            "model_id": None, **changes}


def run(eval_inputs, root: Path, values: dict | None = None, **decision_changes) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    storage.write_json(root / "decision.json", decision(eval_inputs, **decision_changes))
    cfg = parse_section(STAGE.config, {"enabled": True, "device": "cpu", **(values or {})}, "recommend")
    outputs = {name: str(root / "out" / kind.file) for name, kind in STAGE.outputs.items()}
    inputs = {"decision": str(root / "decision.json"), "model": eval_inputs.model, "sid_map": eval_inputs.sid_map,
              "items": eval_inputs.items, "samples": eval_inputs.samples}
    ctx = cli_context({}, "test", "recommend", str(root), f"sqlite:///{root / 'mlflow.db'}", "h")
    metadata = STAGE.execute(cfg, ctx, inputs, outputs)
    return {"table": storage.read_parquet(outputs["recommendations"]), "stats": storage.read_json(outputs["stats"]),
            "metadata": metadata, "outputs": outputs}


@pytest.fixture(scope="module")
def recommended(eval_inputs, tmp_path_factory) -> dict:
    return run(eval_inputs, tmp_path_factory.mktemp("recommend"), {"max_users": 12, "k": 5})


def test_every_active_user_gets_k_live_catalog_items_that_join_back_to_the_catalog(recommended, eval_inputs):
    table = recommended["table"].to_pandas()
    samples = artifacts.read_samples(eval_inputs.samples)
    expected = current_histories(samples, trained_history_length(samples))[:12]
    assert list(table["user_id"]) == [u.user_id for u in expected]  # the most recently active first
    assert [list(h) for h in table["history"]] == [u.history for u in expected]
    items = artifacts.read_items(eval_inputs.items).frame().set_index("item_id")
    catalog = artifacts.read_catalog(eval_inputs.sid_map, eval_inputs.items)
    exploded = table[["user_id", "item_ids", "titles", "sids"]].explode(["item_ids", "titles", "sids"])
    joined = exploded.join(items, on="item_ids", how="inner")  # every recommended item is in the catalog
    assert len(joined) == len(exploded) == 12 * 5
    assert (joined["titles"] == joined["title"]).all()
    live = set(catalog.item_ids)  # never a retired item; each with its own SID
    assert all(i in live and catalog.sid_of[i] == s for i, s in zip(exploded["item_ids"], exploded["sids"]))
    assert table["reasoning"].isna().all()


def test_the_batch_ranks_as_the_shared_decoder(recommended, eval_inputs, tmp_path):
    table = recommended["table"].to_pandas()
    catalog = ServedCatalog.from_catalog(artifacts.read_catalog(eval_inputs.sid_map, eval_inputs.items))
    cfg = parse_section(STAGE.config, {"device": "cpu"}, "recommend")
    decoded = decode_all(eval_inputs.model, catalog.sids, [catalog.history_sids(h, "t") for h in table["history"][:3]],
                         ["direct"], cfg.decoder_settings(), shards=1, seed=0, workdir=tmp_path)["direct"]
    assert [list(r) for r in table["item_ids"][:3]] == [catalog.ranked(d.sids, d.scores, 5).item_ids for d in decoded]


def test_lineage_to_the_model_version_and_the_catalog_snapshot(recommended, eval_inputs):
    meta = artifacts.schema_metadata(recommended["table"])
    assert meta["sidreasoner.registered_model"] == "m" and meta["sidreasoner.model_version"] == "4"
    assert meta["sidreasoner.model_digest"] == storage.digest(eval_inputs.model)
    assert meta["sidreasoner.sid_map_digest"] == storage.digest(eval_inputs.sid_map)
    assert meta["sidreasoner.items_digest"] == storage.digest(eval_inputs.items)
    assert meta["sidreasoner.recommended"] == "true" and meta["sidreasoner.k"] == "5"
    stats = recommended["stats"]
    assert stats["recommended"] and stats["users"] == 12 and 0 < stats["catalog_coverage"] <= 1
    assert stats["model"]["model_version"] == "4" and stats["latency_ms_p50"] > 0
    assert recommended["metadata"]["recommendations"]["rows"] == 12


def test_a_refused_promotion_means_no_recommendations_and_says_why(eval_inputs, tmp_path):
    result = run(eval_inputs, tmp_path, promoted=False)
    assert result["table"].num_rows == 0
    assert result["table"].schema.names == STAGE.outputs["recommendations"].parquet.names
    meta = artifacts.schema_metadata(result["table"])
    assert meta["sidreasoner.recommended"] == "false"
    assert meta["sidreasoner.reason"] == "promotion refused: does not beat production version 3"
    assert result["stats"]["recommended"] is False and "promotion refused" in result["stats"]["reason"]
    assert result["metadata"]["recommendations"]["recommended"] is False


def test_users_from_a_parquet_of_active_users_in_thinking_mode(eval_inputs, tmp_path):
    samples = artifacts.read_samples(eval_inputs.samples)
    histories = [list(s.history) for s in samples.rows[:3]]
    storage.write_parquet(pa.table({"user_id": ["a", "b", "c"], "history": histories}, schema=USERS_SCHEMA),
                          tmp_path / "users.parquet")
    result = run(eval_inputs, tmp_path / "run", {"users": str(tmp_path / "users.parquet"), "k": 3, "mode": "thinking",
                                                 "max_reasoning_tokens": 4})
    table = result["table"].to_pandas()
    assert list(table["user_id"]) == ["a", "b", "c"] and [len(r) for r in table["item_ids"]] == [3, 3, 3]
    assert table["reasoning"].map(lambda r: isinstance(r, str)).all() and (table["reasoning_tokens"] <= 4).all()
    assert result["stats"]["source"] == str(tmp_path / "users.parquet")


def test_active_within_days_keeps_the_recent_users(eval_inputs, tmp_path):
    samples = artifacts.read_samples(eval_inputs.samples)
    users = current_histories(samples, 10)
    newest = users[0].last_timestamp
    recent = [u for u in users if u.last_timestamp >= newest - 30 * 86_400]
    assert 0 < len(recent) < len(users)
    result = run(eval_inputs, tmp_path, {"active_within_days": 30, "max_users": 3})
    assert result["stats"]["active_users"] == len(recent) and result["table"].num_rows == min(3, len(recent))


@pytest.mark.parametrize("users, names", [
    ({"user_id": ["a"], "history": [["no-such-item"]]}, "row 0 (user 'a') history: 1 item id(s) not in the catalog"),
    ({"user_id": ["a", "a"], "history": [["X"], ["X"]]}, "row 1: user 'a' is listed twice"),
    ({"user_id": ["a"], "history": [[]]}, "row 0 (user 'a'): history must be a non-empty list"),
    ({"user_id": [""], "history": [["X"]]}, "row 0: user_id must be a non-empty string"),
])
def test_a_bad_users_parquet_is_refused_naming_the_row(eval_inputs, tmp_path, users, names):
    item = artifacts.read_samples(eval_inputs.samples).rows[0].history[0]
    users["history"] = [[item if i == "X" else i for i in h] for h in users["history"]]
    storage.write_parquet(pa.table(users, schema=USERS_SCHEMA), tmp_path / "users.parquet")
    with pytest.raises(InputError, match=f"users {tmp_path / 'users.parquet'} " + re.escape(names)):
        run(eval_inputs, tmp_path / "run", {"users": str(tmp_path / "users.parquet")})
    assert not (tmp_path / "run" / "out").exists()


def test_only_the_model_promote_registered_is_used(eval_inputs, tmp_path):
    with pytest.raises(InputError, match="is not the model promote registered"):
        run(eval_inputs, tmp_path, model_digest="sha256:0123")


@pytest.mark.parametrize("values, names", [
    ({"k": 11}, "recommend: k 11 is larger than beam_width 10"),
    ({"engine": "vllm", "device": "cpu"}, "engine vllm runs on CUDA only"),
    ({"users": "u.parquet", "active_within_days": 3}, "active_within_days selects users of the samples"),
])
def test_settings_that_cannot_work_are_refused(values, names):
    with pytest.raises(ConfigError, match=re.escape(names)):
        parse_section(STAGE.config, values, "recommend")


def test_cuda_decoding_without_a_gpu_is_refused_before_any_work(eval_inputs, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match="recommend.device/engine: CUDA decoding was requested but this step has no"):
        run(eval_inputs, tmp_path, {"device": "cuda"})
