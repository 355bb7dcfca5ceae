"""The pyfunc in this process: what a request gets back, what it may ask, and the field named in
every refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.common import artifacts
from components.common.decoding import decode_all
from components.common.serving import RESPONSE_COLUMNS, ServedCatalog
from tests.serving.conftest import SETTINGS, TWIN


def histories(eval_inputs, n: int = 4) -> list[list[str]]:
    """The last ``n`` test rows' histories (catalog items)."""
    samples = artifacts.read_samples(eval_inputs.samples).split("test")
    return [list(s.history) for s in samples[-n:]]


def ask(served, rows: list[list[str]], **params) -> pd.DataFrame:
    frame = pd.DataFrame({"user_id": [f"u{i}" for i in range(len(rows))], "history": rows})
    return served.predict(frame, params=params or None)


def test_the_model_is_logged_with_its_signature_example_and_settings(served, servable):
    from mlflow.models import Model

    meta = Model.load(str(servable))
    assert meta.signature.inputs.input_names() == ["history", "user_id"]
    assert {p.name: p.default for p in meta.signature.params} == {
        "k": SETTINGS.default_k, "mode": "direct", "beam_width": SETTINGS.beam_width, "max_reasoning_tokens": 8}
    assert meta.signature.outputs.input_names() == list(RESPONSE_COLUMNS)
    example = meta.load_input_example(str(servable))
    assert list(example.columns) == ["user_id", "history"] and len(example) == 1
    assert meta.flavors["python_function"]["config"]["max_history"] == 10
    assert set(meta.flavors["python_function"]["artifacts"]) == {"model", "catalog", "trie"}
    assert meta.metadata["sidreasoner"]["python_model"] == "components.common.serving.SidRecommender"
    requirements = (Path(servable) / "requirements.txt").read_text().split()
    assert any(r.startswith("mlflow==3.17.2") for r in requirements) and any(r.startswith("torch==") for r in
                                                                            requirements)


def test_k_ranked_live_items_with_titles_scores_and_sids(served, catalog, eval_inputs):
    rows = histories(eval_inputs)
    answer = ask(served, rows, k=5)
    assert list(answer.columns) == list(RESPONSE_COLUMNS) and list(answer["user_id"]) == ["u0", "u1", "u2", "u3"]
    for _, row in answer.iterrows():
        assert len(row["item_ids"]) == len(row["titles"]) == len(row["scores"]) == len(row["sids"]) == 5
        assert all(catalog.status_of[i] != "retired" for i in row["item_ids"])
        assert [catalog.sid_of[i] for i in row["item_ids"]] == list(row["sids"])
        assert [catalog.title_of[i] for i in row["item_ids"]] == list(row["titles"])
        assert list(row["scores"]) == sorted(row["scores"], reverse=True)
        assert row["reasoning"] is None and row["reasoning_tokens"] is None


def test_the_served_model_ranks_as_the_batch_decoder_does(served, catalog, eval_inputs, tmp_path):
    """Online and batch (decode_all, what evaluate and recommend run) give the same SIDs and scores."""
    rows = histories(eval_inputs)
    answer = ask(served, rows, k=10)
    sids = [catalog.history_sids(h, "test") for h in rows]
    decoded = decode_all(eval_inputs.model, catalog.sids, sids, ["direct"], SETTINGS, shards=1, seed=0,
                         workdir=tmp_path)["direct"]
    for row, batch in zip(answer.itertuples(), decoded):
        expanded = catalog.ranked(batch.sids, batch.scores, 10)
        assert list(row.item_ids) == expanded.item_ids
        np.testing.assert_allclose(row.scores, expanded.scores, rtol=1e-5)


def test_items_sharing_a_sid_are_expanded_in_place_and_retired_ones_never_returned(served, catalog, eval_inputs,
                                                                                     tmp_path):
    """A SID two live items share stands for both, in catalog order, at its score; a retired
    item's SID for none. (The twin here shares the SID the model ranks first for the history.)"""
    import mlflow

    from components.common.serving import save_servable
    from tests.serving.conftest import example

    history = histories(eval_inputs, 1)[0]
    top = ask(served, [history], k=1)["item_ids"][0][0]
    table = catalog.table().to_pylist()
    twin = ServedCatalog([r["item_id"] for r in table] + ["TWIN-OF-TOP"],
                         [r["sid"] for r in table] + [catalog.sid_of[top]],
                         [r["status"] for r in table] + ["new"], [r["title"] for r in table] + ["The top twin"])
    path = save_servable(tmp_path / "model", model_dir=Path(eval_inputs.model), catalog=twin, settings=SETTINGS,
                         example=example(eval_inputs), metadata={})
    answer = ask(mlflow.pyfunc.load_model(str(path)), [history], k=3).iloc[0]
    assert list(answer["item_ids"][:2]) == [top, "TWIN-OF-TOP"] and answer["titles"][1] == "The top twin"
    assert answer["scores"][0] == answer["scores"][1] and answer["sids"][0] == answer["sids"][1]
    retired = next(i for i, s in catalog.status_of.items() if s == "retired")
    everything = ask(served, [history], k=50, beam_width=50)["item_ids"][0]
    assert retired not in everything and len(set(everything)) == 50
    shared = catalog.sid_of[TWIN]  # the fixture's twin: expanded wherever its SID ranks
    for item, sid in zip(everything, ask(served, [history], k=50, beam_width=50)["sids"][0]):
        assert (catalog.sid_of[item] == sid) and (sid != shared or item in catalog.items_of[shared])


def test_thinking_mode_returns_the_reasoning_within_its_budget(served, eval_inputs):
    answer = ask(served, histories(eval_inputs, 2), k=3, mode="thinking", max_reasoning_tokens=4)
    for _, row in answer.iterrows():
        assert isinstance(row["reasoning"], str) and isinstance(row["reasoning_closed"], (bool, np.bool_))
        assert 0 < row["reasoning_tokens"] <= 4 and len(row["item_ids"]) == 3


def test_histories_keep_their_most_recent_items_and_may_name_retired_ones(served, catalog, eval_inputs):
    history = histories(eval_inputs, 1)[0]
    retired = next(i for i, s in catalog.status_of.items() if s == "retired")
    long = [retired] * 15 + history  # longer than max_history (10)
    cut = (long)[-SETTINGS.max_history:]
    assert ask(served, [long])["item_ids"][0] == ask(served, [cut])["item_ids"][0]
    assert len(ask(served, [[retired]])["item_ids"][0]) == SETTINGS.default_k


def test_defaults_come_from_the_logged_settings(served, eval_inputs):
    answer = ask(served, histories(eval_inputs, 1))
    assert len(answer["item_ids"][0]) == SETTINGS.default_k and answer["reasoning"][0] is None


def test_a_server_may_override_the_logged_settings_when_it_loads_the_model(servable, served, eval_inputs):
    import mlflow

    history = histories(eval_inputs, 1)[0]
    model = mlflow.pyfunc.load_model(str(servable), model_config={"max_history": 1, "reasoning_token_limit": 32})
    assert ask(model, [history])["item_ids"][0] == ask(served, [history[-1:]])["item_ids"][0]
    assert ask(model, [history], mode="thinking", max_reasoning_tokens=32)["reasoning_tokens"][0] <= 32
    with pytest.raises(Exception, match=r"model_config.max_history: Input should be a valid integer"):
        mlflow.pyfunc.load_model(str(servable), model_config={"max_history": "all"})


GOOD = ["ITEM"]  # replaced by a real catalog item in the test


@pytest.mark.parametrize("frame, params, names", [
    ({"history": [["no-such-item"]]}, None, "history[0]: 1 item id(s) not in the catalog: 'no-such-item'"),
    ({"history": [GOOD, ["x", "y"]]}, None, "history[1]: 2 item id(s) not in the catalog"),
    ({"history": [[]]}, None, "history[0]: empty history"),
    ({"history": [GOOD], "user_id": [7]}, None, "column user_id"),
    ({"history": [GOOD]}, {"k": 11}, "param k: 11 is outside [1, 10] (k larger than the beam"),
    ({"history": [GOOD]}, {"k": 6, "beam_width": 5}, "param k: 6 is outside [1, 5]"),
    ({"history": [GOOD]}, {"k": 0}, "param k: 0 is outside"),
    ({"history": [GOOD]}, {"beam_width": 51}, "param beam_width: 51 is outside [1, 50]"),
    ({"history": [GOOD]}, {"mode": "fast"}, "param mode: must be one of ['direct', 'thinking'] (got 'fast')"),
    ({"history": [GOOD]}, {"max_reasoning_tokens": 17}, "param max_reasoning_tokens: 17 is outside [1, 16]"),
    ({"history": [GOOD]}, {"k": "ten"}, "'k'"),
    ({"history": [GOOD] * 300}, None, "history: 300 rows, more than the 256"),
    ({"hist": [GOOD]}, None, "missing inputs ['history']"),
])
def test_bad_requests_are_refused_naming_the_field(served, eval_inputs, frame, params, names):
    from mlflow.exceptions import MlflowException

    item = histories(eval_inputs, 1)[0][0]
    frame = pd.DataFrame({k: [[item] if v is GOOD else v for v in values] for k, values in frame.items()})
    with pytest.raises(MlflowException) as raised:
        served.predict(frame, params=params)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert names in raised.value.message


def test_a_catalog_and_trie_of_different_models_do_not_load(catalog, servable, tmp_path):
    """The trie must hold exactly the catalog's live SIDs: a catalog one item short is refused."""
    import shutil

    import mlflow

    from components.common import storage

    copy = Path(shutil.copytree(servable, tmp_path / "model"))
    table = catalog.table()
    alone = next(i for i, item in enumerate(table.column("item_id").to_pylist())
                 if len(catalog.items_of.get(catalog.sid_of[item], ())) == 1)  # a live item with its own SID
    storage.write_parquet(table.filter([i != alone for i in range(table.num_rows)]),
                          copy / "artifacts" / "catalog.parquet")
    with pytest.raises(ValueError, match="not the catalog's .* live SIDs: the artifacts are not of one model"):
        mlflow.pyfunc.load_model(str(copy))


def test_the_served_catalog_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="row 1: item 'a' is listed twice"):
        ServedCatalog(["a", "a"], ["<a_1><b_1>", "<a_1><b_2>"], ["active"] * 2, ["t", "t"])
    with pytest.raises(ValueError, match="row 0 .*status 'gone'"):
        ServedCatalog(["a"], ["<a_1><b_1>"], ["gone"], ["t"])
    with pytest.raises(ValueError, match="no live"):
        ServedCatalog(["a"], ["<a_1><b_1>"], ["retired"], ["t"])
    with pytest.raises(ValueError, match="different lengths"):
        ServedCatalog(["a", "b"], ["<a_1><b_1>", "<a_1>"], ["active"] * 2, ["t", "t"])
    served = ServedCatalog(["a", "b"], ["<a_1><b_1>", "<a_1><b_2>"], ["active"] * 2, ["t", None])
    assert served.title_of["b"] == "(item b)"
    with pytest.raises(RuntimeError, match="fewer than k=3"):  # never a silently shorter list
        served.ranked(["<a_1><b_1>", "<a_1><b_2>"], [-1.0, -2.0], 3)
