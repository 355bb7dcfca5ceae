"""Evaluation fixtures: the demo catalog ingested to items/samples Parquet, a SID map built for
it per the contract, and a tiny random model that knows the SID vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from components.common import sid, storage
from components.common.artifacts import items_table, samples_table
from components.common.config import parse_section
from components.ingest.config import IngestConfig
from components.ingest.preprocess import preprocess
from components.ingest.readers import read_catalog
from tests.tiny_sid_model import build_sid_model

CODEBOOKS = (4, 6, 6)  # 144 codes for the demo's ~130 items


@dataclass
class EvalInputs:
    items: str
    samples: str
    sid_map: str
    model: str
    root: Path
    rankings: str = ""
    """The baselines stage's rankings of these samples (popularity, SASRec, SASRec-CE)."""


def sid_map_table(item_ids: list[str], statuses: dict[str, str] | None = None) -> pa.Table:
    """One unique SID per item: item i gets codes (i // 36, i // 6 % 6, i % 6)."""
    codes = [[i // 36, i // 6 % 6, i % 6] for i in range(len(item_ids))]
    statuses = statuses or {}
    return pa.table({
        "item_id": item_ids, "codes": pa.array(codes, type=pa.list_(pa.int32())),
        "sid": [sid.format_sid(c) for c in codes], "status": [statuses.get(i, "active") for i in item_ids],
    })


@pytest.fixture(scope="session")
def eval_inputs(demo_data, tmp_path_factory) -> EvalInputs:
    root = tmp_path_factory.mktemp("eval-inputs")
    cfg = parse_section(IngestConfig, {"format": "amazon18", "source": str(demo_data),
                                       "preprocess": {"min_window_items": 100}}, "ingest")
    items, samples, _ = preprocess(read_catalog(cfg), cfg.preprocess)
    storage.write_parquet(items_table(items), root / "items.parquet")
    storage.write_parquet(samples_table(samples), root / "samples.parquet")
    storage.write_parquet(sid_map_table(items["item_id"].tolist()), root / "sid_map.parquet")
    model = build_sid_model(root / "model", CODEBOOKS, seed=5)
    inputs = EvalInputs(str(root / "items.parquet"), str(root / "samples.parquet"), str(root / "sid_map.parquet"),
                        str(model), root)
    inputs.rankings = baseline_rankings(inputs, root / "baselines")
    return inputs


def baseline_rankings(inputs: EvalInputs, out: Path) -> str:
    """The baselines stage's rankings of the inputs' valid and test rows (SASRec and SASRec-CE: 2
    epochs, one SASRec-CE setting)."""
    from components.baselines import STAGE
    from components.common.stage import cli_context

    ctx = cli_context({}, "test", "baselines", str(out), None, "h")
    outputs = {name: str(out / kind.file) for name, kind in STAGE.outputs.items()}
    cfg = parse_section(STAGE.config, {"models": ["popularity", "sasrec", "sasrec_ce"], "sasrec": {"epochs": 2},
                                       "sasrec_ce": {"epochs": 2, "grid": {"hidden_size": [32]}}}, "baselines")
    STAGE.execute(cfg, ctx, {"samples": inputs.samples, "sid_map": inputs.sid_map}, outputs)
    return outputs["rankings"]
