"""The training stages re-check the reasoning artifact with the shared leak detector: a reasoning path that
names its target SID in any spelling is refused, one that names only history SIDs is read."""

from __future__ import annotations

import pyarrow as pa
import pytest

from components.common import artifacts, storage
from components.common.errors import InputError
from components.common.sid import parse_sid


def _with_reasoning(src: str, dst, text: str) -> str:
    rows = storage.read_parquet(src).to_pylist()
    rows[0]["reasoning"] = text
    storage.write_parquet(pa.Table.from_pylist(rows, schema=storage.read_parquet(src).schema), dst)
    return str(dst)


@pytest.mark.parametrize("spelling", [
    lambda sid, codes: sid.upper(),
    lambda sid, codes: " ".join(f"{letter}_{code}" for letter, code in zip("abc", codes)),
    lambda sid, codes: sid.replace("<", "＜").replace(">", "＞"),
    lambda sid, codes: "(" + ", ".join(map(str, codes)) + ")",
], ids=["upper case", "as words", "full-width brackets", "bare codes"])
def test_target_sid_in_any_spelling_is_refused(tmp_path, synthetic, spelling):
    catalog = artifacts.read_catalog(synthetic["sid_map"])
    target = storage.read_parquet(synthetic["reasoning"])["target_sid"][0].as_py()
    leak = _with_reasoning(synthetic["reasoning"], tmp_path / "r.parquet",
                           f"I think they want {spelling(target, parse_sid(target))} next.")
    with pytest.raises(InputError, match=r"reasoning .* row 0: the reasoning mentions the target SID"):
        artifacts.read_reasoning(leak, catalog)


def test_history_sids_are_read(tmp_path, synthetic):
    catalog = artifacts.read_catalog(synthetic["sid_map"])
    row = storage.read_parquet(synthetic["reasoning"]).to_pylist()[0]
    honest = _with_reasoning(synthetic["reasoning"], tmp_path / "r.parquet",
                             f"Latest: {row['history_sids'][-1]}. So next: something for writing.")
    assert artifacts.read_reasoning(honest, catalog)[0].reasoning.startswith("Latest: ")
