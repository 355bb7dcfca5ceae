"""Small inputs for the teacher corpus tests: items, samples and a SID map per the contracts."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from components.common import storage
from components.common.config import parse_section
from components.common.sid import format_sid
from components.common.stage import StageContext
from components.teacher_corpus.config import TeacherCorpusConfig

CATEGORIES = ["Pens", "Paper", "Binders", "Labels"]
BRANDS = ["Acme", "Papyra", "Inkwell"]


def sid_map_table(item_ids: list[str], statuses: dict[str, str] | None = None, sizes=(8, 8)) -> pa.Table:
    """Unique SIDs by enumeration (item k -> its k-th code tuple over last-level codebook
    ``sizes``), status ``active`` unless given."""
    statuses = statuses or {}
    rows = []
    for k, item_id in enumerate(item_ids):
        codes = [k // (sizes[0] * sizes[1]), k // sizes[1] % sizes[0], k % sizes[1]]
        rows.append({"item_id": item_id, "codes": codes, "sid": format_sid(codes),
                     "status": statuses.get(item_id, "active")})
    schema = pa.schema([("item_id", pa.string()), ("codes", pa.list_(pa.int32())), ("sid", pa.string()),
                        ("status", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def items_table(n: int) -> pa.Table:
    rows = []
    for k in range(n):
        cat = CATEGORIES[k % len(CATEGORIES)]
        rows.append({"item_id": f"i{k}", "title": f"{BRANDS[k % 3]} {cat[:-1]} Model {k}",
                     "description": f"A {cat.lower()} product number {k}. It is sturdy and useful.",
                     "brand": BRANDS[k % 3], "categories": ["Office", cat]})
    schema = pa.schema([("item_id", pa.string()), ("title", pa.string()), ("description", pa.string()),
                        ("brand", pa.string()), ("categories", pa.list_(pa.string()))])
    return pa.Table.from_pylist(rows, schema=schema)


def samples_table(rows: list[tuple[str, list[str], str, int, str]]) -> pa.Table:
    schema = pa.schema([("user_id", pa.string()), ("history", pa.list_(pa.string())), ("target", pa.string()),
                        ("timestamp", pa.int64()), ("split", pa.string())])
    return pa.Table.from_pylist([dict(zip(schema.names, r)) for r in rows], schema=schema)


def toy_samples(n_users: int = 6, n_train_items: int = 12, held_out: tuple[str, ...] = ("i12", "i13")):
    """Sliding-window samples over items i0..i{n-1} for train; the valid/test samples target
    ``held_out`` items, which occur in no train sample at all."""
    rows, t = [], 1_500_000_000
    for u in range(n_users):
        seq = [f"i{(u * 3 + k) % n_train_items}" for k in range(5)]
        for i in range(1, len(seq)):
            rows.append((f"u{u}", seq[max(0, i - 4):i], seq[i], t, "train"))
            t += 60
    for u in range(n_users):
        split = "valid" if u % 2 == 0 else "test"
        rows.append((f"u{u}", [f"i{(u * 3 + 4) % n_train_items}"], held_out[u % len(held_out)], t, split))
        t += 60
    return rows


def write_inputs(root: Path, n_items: int = 14, samples=None, statuses=None) -> dict[str, str]:
    """items/samples/sid_map Parquet files under ``root``; returns the stage's input URIs."""
    root.mkdir(parents=True, exist_ok=True)
    items = items_table(n_items)
    ids = items.column("item_id").to_pylist()
    paths = {"items": str(root / "items.parquet"), "samples": str(root / "samples.parquet"),
             "sid_map": str(root / "sid_map.parquet")}
    storage.write_parquet(items, paths["items"])
    storage.write_parquet(samples_table(samples if samples is not None else toy_samples()), paths["samples"])
    storage.write_parquet(sid_map_table(ids, statuses), paths["sid_map"])
    return paths


def config(**sections) -> TeacherCorpusConfig:
    return parse_section(TeacherCorpusConfig, sections, "teacher_corpus")


def context(tmp: Path, tracking_uri: str | None = None, run_key: str = "cli-test") -> StageContext:
    return StageContext(run_key=run_key, pipeline_name="p", profile="test", config_hash="h",
                        tracking_uri=tracking_uri or f"sqlite:///{tmp / 'mlflow.db'}",
                        experiment="teacher-corpus-test", artifact_location=str(tmp / "mlartifacts"),
                        cache_uri=str(tmp / "cache"), seed=42, final_stage="teacher_corpus")


def outputs(root: Path) -> dict[str, str]:
    return {"corpus": str(root / "corpus.parquet"), "reasoning": str(root / "reasoning.parquet"),
            "stats": str(root / "stats.json")}


class RecordingTracker:
    """Stands in for the MLflow stage run in tests that call ``stage.run`` directly."""

    def __init__(self):
        self.params: dict = {}
        self.metrics: list[dict] = []
        self.dicts: dict[str, object] = {}
        self.tags: dict = {}

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    def log_dict(self, obj, artifact_file):
        self.dicts[artifact_file] = obj

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_dataset(self, *args, **kwargs):
        pass

    def log_artifact(self, *args, **kwargs):
        pass


API_KEY_ENV = "TEACHER_TEST_API_KEY"
API_KEY = "sk-test-0123456789-do-not-leak"


def teacher_section(url: str, **overrides) -> dict:
    """A litellm teacher section for the local server, with short timeouts and back-offs."""
    section = {"backend": "litellm", "model": "openai/teacher", "api_base": url, "api_key_env": API_KEY_ENV,
               "concurrency": 4, "timeout_s": 10.0, "max_retries": 4, "backoff_initial_s": 0.02,
               "backoff_max_s": 0.1}
    section.update(overrides)
    return section
