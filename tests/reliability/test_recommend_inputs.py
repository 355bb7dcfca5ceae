"""Bad input to ``python -m components.recommend``: one row per defect, each refused before any model
work with one message naming the file, row or field, a clean exit and nothing under ``--out``.

Every row starts from small valid inputs (a three-item catalog, its samples, a promotion decision
naming the model folder given) and changes one thing. The model folder is never loaded: every
defect here is found first (``tests/recommend/test_stage.py`` runs the stage with a real model).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from components.common import artifacts, storage
from components.common.config import ConfigError
from tests.reliability.harness import Case, StageCall, check, check_cli, write_profile

ITEMS = ["I1", "I2", "I3"]
USERS = "users.parquet"


def valid(root: Path, sets: tuple[str, ...] = (), decision: dict | None = None,
          users: dict | None = None) -> StageCall:
    """The stage's inputs under ``root/in``, valid unless the row changes one of them."""
    inputs = root / "in"
    storage.write_parquet(artifacts.items_table(pa.table({
        "item_id": ITEMS, "title": [f"Item {i}" for i in ITEMS], "description": [""] * 3, "brand": [""] * 3,
        "categories": [["Office"]] * 3}).to_pandas()), inputs / "items.parquet")
    storage.write_parquet(artifacts.samples_table(pa.table({
        "user_id": ["u1", "u2"], "history": [["I1"], ["I2", "I3"]], "target": ["I2", "I1"], "timestamp": [1, 2],
        "split": ["train", "test"]}).to_pandas()), inputs / "samples.parquet")
    storage.write_parquet(artifacts.sid_map_table(ITEMS, [[0, 0], [0, 1], [1, 0]], ["active"] * 3, [2, 2], None),
                          inputs / "sid_map.parquet")
    storage.write_text(inputs / "model" / "config.json", "{}")
    storage.write_json(inputs / "decision.json", {
        "promoted": True, "reason": "first model", "registered_model": "m", "version": "1",
        "model_uri": "models:/m/1", "model_digest": storage.digest(inputs / "model"), "model_id": None,
        **(decision or {})})
    extra = ()
    if users is not None:
        storage.write_parquet(pa.table(users), inputs / USERS)
        extra = (f"recommend.users={inputs / USERS}",)
    config = write_profile(root / "profile.yaml", {"recommend": {"enabled": True, "device": "cpu"}})
    return StageCall("recommend", config, root / "out", sets + extra, {
        "decision": str(inputs / "decision.json"), "model": str(inputs / "model"),
        "sid_map": str(inputs / "sid_map.parquet"), "items": str(inputs / "items.parquet"),
        "samples": str(inputs / "samples.parquet")})


def users_row(**columns) -> Callable[[Path], StageCall]:
    return lambda root: valid(root, users=columns)


TABLE = [
    Case("users-unknown-item", "catalog mismatch",
         users_row(user_id=pa.array(["a"]), history=pa.array([["I1", "I9"]], pa.list_(pa.string()))),
         names=f"{USERS} row 0 (user 'a') history: 1 item id(s) not in the catalog: 'I9'"),
    Case("users-duplicate", "duplicate id or field",
         users_row(user_id=pa.array(["a", "a"]), history=pa.array([["I1"], ["I2"]], pa.list_(pa.string()))),
         names=f"{USERS} row 1: user 'a' is listed twice (first at row 0)"),
    Case("users-empty-history", "malformed record",
         users_row(user_id=pa.array(["a"]), history=pa.array([[]], pa.list_(pa.string()))),
         names=f"{USERS} row 0 (user 'a'): history must be a non-empty list of item ids"),
    Case("users-missing-column", "malformed record", users_row(user_id=pa.array(["a"])),
         names=f"{USERS}: missing column(s) ['history']"),
    Case("users-history-of-numbers", "wrong type",
         users_row(user_id=pa.array(["a"]), history=pa.array([[1, 2]], pa.list_(pa.int64()))),
         names=f"{USERS}: column 'history' has type list<", says=("int64>, expected list<item: string>",)),
    Case("decision-of-another-model", "catalog mismatch",
         lambda root: valid(root, decision={"model_digest": "sha256:" + "0" * 64}),
         names="is not the model promote registered (digest sha256:0000000000000000)"),
    Case("k-above-the-beam", "config", lambda root: valid(root, sets=("recommend.k=11",)),
         names="recommend: k 11 is larger than beam_width 10", error=ConfigError),
    Case("vllm-on-a-cpu", "config", lambda root: valid(root, sets=("recommend.engine=vllm",)),
         names="engine vllm runs on CUDA only", error=ConfigError),
]
CLI_ROWS = ("users-unknown-item", "k-above-the-beam")


def test_the_table_has_one_row_per_defect():
    assert len({case.id for case in TABLE}) == len(TABLE) and set(CLI_ROWS) <= {case.id for case in TABLE}


@pytest.mark.parametrize("case", [case.param() for case in TABLE])
def test_bad_input_fails_clearly(case, tmp_path, tracking_uri, capsys):
    check(case, tmp_path, tracking_uri, capsys)


@pytest.mark.parametrize("case", [case.param() for case in TABLE if case.id in CLI_ROWS])
def test_bad_input_fails_clearly_on_the_command_line(case, tmp_path, tracking_uri):
    check_cli(case, tmp_path, tracking_uri)
