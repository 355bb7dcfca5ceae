"""Valid inputs for the stages after ingest, written per the artifact contracts, and the edits
that break one thing each: the building blocks of the reliability rows of those stages.

Every builder writes under a row's own folder: the synthetic 16-item catalog of the training
tests (items, samples, sid_map, corpus, reasoning), model folders as the training stages write
them (a tiny random model that knows the SID tokens, with its ``sidreasoner.json`` record), and
a profile holding the CPU settings a stage needs here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from components.common import artifacts, storage
from components.common.artifacts import SID_SPACE_KEY, ModelRecord, schema_metadata
from tests.reliability.harness import StageCall, write_profile
from tests.training.synthetic import write_synthetic

#: What every CPU run of a training stage needs (STACK.md section 3) and keeps the rows fast.
CPU = {"bf16": False, "gradient_checkpointing": False, "logging_steps": 1}
#: Two fingerprints of SID spaces (sid_quantize writes the codebooks' weight digest).
SPACE, OTHER_SPACE = "sha256:" + "a" * 64, "sha256:" + "b" * 64

Edit = Callable[[dict[str, str]], None]


def catalog(root: Path, space: str | None = SPACE) -> dict[str, str]:
    """The synthetic catalog under ``root/in``, every SID-bearing artifact in SID space ``space``."""
    paths = write_synthetic(root / "in")
    if space is not None:
        for name in ("sid_map", "corpus", "reasoning"):
            set_space(paths[name], space)
    return paths


def set_space(path: str, space: str) -> None:
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({**schema_metadata(table), SID_SPACE_KEY: space}), path)


#: The codebook sizes of the synthetic catalog's SIDs.
CODEBOOKS = (2, 4, 2)


def tiny_model(folder: Path) -> Path:
    """A tiny random model that knows the synthetic catalog's SID tokens (the session builds one)."""
    from tests.tiny_sid_model import build_sid_model

    return build_sid_model(folder, CODEBOOKS, seed=0)


def model(folder: Path, template: Path, space: str | None = SPACE, stage: str = "align_sft") -> str:
    """A model folder as a training stage publishes it (a copy of ``template``, a
    :func:`tiny_model`): weights, SID vocabulary and its record."""
    with storage.staged_dir(folder) as tmp:
        shutil.copytree(template, tmp, dirs_exist_ok=True)
        vocabulary = tmp / artifacts.SID_VOCAB_FILE
        tokens = json.loads(vocabulary.read_text()) if vocabulary.is_file() else []
        artifacts.write_model_record(str(tmp), ModelRecord(sid_space=space, sid_map_digest=None, stage=stage), tokens)
    return str(folder)


def rewrite_table(path: str, change: Callable[[pa.Table], pa.Table]) -> None:
    """Apply ``change`` to a Parquet artifact (its schema metadata kept unless changed)."""
    pq.write_table(change(pq.read_table(path)), path)


def drop_column(name: str) -> Callable[[pa.Table], pa.Table]:
    return lambda table: table.drop_columns([name])


def rows(keep: Callable[[dict[str, Any]], bool] | None = None,
         edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Callable[[pa.Table], pa.Table]:
    """Keep the rows ``keep`` accepts and ``edit`` each (the schema and its metadata kept)."""
    def change(table: pa.Table) -> pa.Table:
        kept = [edit(dict(r)) if edit else r for r in table.to_pylist() if keep is None or keep(r)]
        return pa.Table.from_pylist(kept, schema=table.schema)
    return change


def stage_call(root: Path, stage: str, section: dict[str, Any], inputs: dict[str, str],
               sets: tuple[str, ...] = (), **sections: Any) -> StageCall:
    """The profile a user would write for ``stage`` and the command that runs it."""
    config = write_profile(root / "profile.yaml", {
        "run": {"name": "reliability", "seed": 7}, "storage": {"cache_uri": str(root / "cache")},
        stage: section, **sections})
    return StageCall(stage=stage, config=config, out=root / "out", sets=sets, inputs=inputs)


def remove(path: str) -> None:
    target = Path(path)
    shutil.rmtree(target) if target.is_dir() else target.unlink()
