"""Config section ``ingest``: where the catalog comes from and how it is preprocessed.

Defaults are the paper's preprocessing (RECIPE.md section 1): title filter, a 2016-10..2018-11
review window moved back a year at a time (at most 10) while fewer than 3,000 items survive,
iterative 5-core, sliding-window histories of at most 10 items, and a global chronological 8:1:1
split.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.common.config import Section

Format = Literal["amazon18", "amazon23", "release", "parquet"]

#: File roles of each format and their default names (relative to ``source``).
DEFAULT_FILES: dict[str, dict[str, str]] = {
    # Amazon Reviews 2018 raw: reviews and meta JSON lines, optionally gzipped.
    "amazon18": {"reviews": "reviews.json.gz", "meta": "meta.json.gz"},
    # Amazon Reviews 2023 raw JSONL.
    "amazon23": {"reviews": "reviews.jsonl.gz", "meta": "meta.jsonl.gz"},
    # MiniOneRec / SIDReasoner processed release: CSV splits, item.json, optional index.json.
    "release": {"items": "item.json", "train": "train.csv", "valid": "valid.csv",
                "test": "test.csv", "index": "index.json"},
    # Generic Parquet export of a platform's own catalog.
    "parquet": {"interactions": "interactions.parquet", "items": "items.parquet"},
}
#: Roles that may be absent (the shared release pack ships no train split).
OPTIONAL_FILES: dict[str, set[str]] = {
    "amazon18": set(), "amazon23": set(), "parquet": set(),
    "release": {"train", "valid", "test", "index"},
}
#: Units of numeric timestamps: divisor to unix seconds.
TIME_UNITS: dict[str, int] = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
TimeUnit = Literal["s", "ms", "us", "ns"]
#: Unit of each format's numeric timestamps unless ``ingest.timestamp_unit`` says otherwise.
DEFAULT_TIME_UNIT: dict[str, str] = {"amazon18": "s", "amazon23": "ms", "parquet": "s"}
#: Canonical column names a ``parquet`` source can rename through ``ingest.columns``.
PARQUET_COLUMNS = ("user_id", "item_id", "timestamp", "title", "description", "brand", "categories")


class PreprocessConfig(Section):
    """Filtering, sequence building and splitting (applied to raw and Parquet sources)."""

    title_filter: bool = True
    """Drop items whose title is missing, contains '<span id', has <= 1 character or more than
    ``title_max_words`` words (the recipe). When false such a title is an error instead.
    Parquet exports are curated: an empty title there is always an error. A release pack is
    already filtered upstream; only its empty titles are checked (an error)."""
    title_max_words: int = Field(20, ge=1)
    """Longest title kept, in words."""
    window_start: dt.date | None = dt.date(2016, 10, 1)
    """First day of the review window (inclusive); null: no lower bound."""
    window_end: dt.date | None = dt.date(2018, 12, 1)
    """End of the review window (exclusive); null: no upper bound."""
    min_window_items: int = Field(3000, ge=0)
    """While fewer items survive window + k-core, move window_start back one year (recipe: 3000)."""
    max_window_extensions: int = Field(10, ge=0)
    """Move window_start back at most this many years; if still fewer than min_window_items
    items survive while older reviews exist, ingest stops with an error (the recipe sets no bound;
    10 reaches 2006 from the default start, earlier than any category needs)."""
    max_unknown_item_share: float = Field(0.5, ge=0.0, le=1.0)
    """Share of the interactions that may name items absent from the catalog (meta / items
    file): they are dropped with a warning giving the share; past it, or when no interaction
    names a catalog item, ingest stops with an error (the two files do not belong together, or
    write ids differently)."""
    k_core: int = Field(5, ge=1)
    """Iterative user and item k-core threshold (interactions per user and per item)."""
    max_history: int = Field(10, ge=1)
    """Sliding-window history length (most recent items kept)."""
    split: list[float] = Field(default_factory=lambda: [0.8, 0.1, 0.1])
    """Global chronological train/valid/test fractions over samples sorted by target time."""
    description_max_chars: int = Field(2000, ge=0)
    """Descriptions are cleaned of HTML and cut to this length."""

    @field_validator("split")
    @classmethod
    def _split(cls, value: list[float]) -> list[float]:
        if len(value) != 3 or any(v < 0 for v in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"must be three non-negative fractions summing to 1 (got {value})")
        return value

    @model_validator(mode="after")
    def _window(self) -> PreprocessConfig:
        if self.window_start and self.window_end and self.window_start >= self.window_end:
            raise ValueError(f"window_start {self.window_start} must be before window_end {self.window_end}")
        return self


class IngestConfig(Section):
    """Input catalog and interactions, and their preprocessing."""

    format: Format
    """amazon18 | amazon23 | release | parquet."""
    source: str
    """Folder holding the input files, a local path or gs:// URI."""
    files: dict[str, str] = Field(default_factory=dict)
    """File role -> name relative to ``source``; unset roles take the format's defaults."""
    columns: dict[str, str] = Field(default_factory=dict)
    """``parquet`` only: canonical column -> column name in the files (e.g. timestamp: ts)."""
    timestamp_unit: TimeUnit | None = None
    """Unit of numeric timestamps (s, ms, us, ns); unset: the format's own (amazon18 s,
    amazon23 ms, parquet s). Every timestamp must be a plausible date (1990 to today), so a
    wrong unit is an error that names the unit the values fit."""
    resplit: bool = False
    """``release`` only: redo the global chronological split over all rows of the splits that
    exist (use it when a pack lacks a split, e.g. the shared Office pack has no train split)."""
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)

    @model_validator(mode="after")
    def _check(self) -> IngestConfig:
        unknown = set(self.files) - set(DEFAULT_FILES[self.format])
        if unknown:
            raise ValueError(f"files: unknown role(s) {sorted(unknown)} for format {self.format}; "
                             f"known: {sorted(DEFAULT_FILES[self.format])}")
        if self.columns and self.format != "parquet":
            raise ValueError("columns: only the parquet format renames columns")
        unknown_cols = set(self.columns) - set(PARQUET_COLUMNS)
        if unknown_cols:
            raise ValueError(f"columns: unknown canonical column(s) {sorted(unknown_cols)}; "
                             f"known: {list(PARQUET_COLUMNS)}")
        if self.resplit and self.format != "release":
            raise ValueError("resplit: only the release format has precomputed splits")
        if self.timestamp_unit and self.format == "release":
            raise ValueError("timestamp_unit: the release format has no timestamps")
        return self

    def time_unit(self) -> str:
        """Unit of this source's numeric timestamps."""
        return self.timestamp_unit or DEFAULT_TIME_UNIT[self.format]

    def file_roles(self) -> dict[str, str]:
        """Role -> file name, defaults merged with ``files``."""
        return {**DEFAULT_FILES[self.format], **self.files}
