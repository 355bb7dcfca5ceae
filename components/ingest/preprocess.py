"""The recipe's preprocessing: title filter, review window, iterative k-core, sliding-window
samples and the global chronological split (RECIPE.md section 1)."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from components.common.errors import InputError
from components.ingest.config import PreprocessConfig
from components.ingest.readers import SPLITS, RawCatalog, iso_day

log = logging.getLogger(__name__)


def title_problem(title: str, max_words: int) -> str | None:
    """Why the recipe drops an item with this title, or None if it keeps it."""
    if not title:
        return "empty"
    if "<span id" in title:
        return "span_markup"
    if len(title) <= 1:
        return "too_short"
    if len(title.split()) > max_words:
        return "too_long"
    return None


def filter_titles(items: pd.DataFrame, cfg: PreprocessConfig, source: str) -> tuple[pd.DataFrame, dict[str, int]]:
    problems = items["title"].map(lambda t: title_problem(t, cfg.title_max_words))
    bad = problems.notna()
    counts = dict(Counter(problems[bad]))
    if bad.any() and not cfg.title_filter:
        first = items.loc[bad].iloc[0]
        raise InputError(f"{source}: {int(bad.sum())} item(s) with an invalid title "
                         f"({counts}); e.g. item {first['item_id']!r}: {first['title'][:60]!r}. "
                         "Enable ingest.preprocess.title_filter to drop them")
    if bad.all():
        advice = {"empty": "check that the items have a 'title' field",
                  "too_long": f"raise ingest.preprocess.title_max_words ({cfg.title_max_words})"}
        hints = [advice[problem] for problem in counts if problem in advice]
        raise InputError(f"{source}: all {len(items):,} items fail the title filter ({counts})"
                         + (f"; {' or '.join(hints)}" if hints else ""))
    return items.loc[~bad].reset_index(drop=True), counts


def kcore(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively drop users and items with fewer than ``k`` interactions until stable."""
    df = interactions
    while True:
        user_n = df.groupby("user_id")["item_id"].transform("size")
        item_n = df.groupby("item_id")["user_id"].transform("size")
        keep = (user_n >= k) & (item_n >= k)
        if keep.all():
            return df
        df = df.loc[keep]


def _epoch(day: dt.date | None) -> int | None:
    if day is None:
        return None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())


def window_kcore(interactions: pd.DataFrame, cfg: PreprocessConfig,
                 source: str = "interactions") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Apply the review window and k-core; move the start back a year while too few items survive
    and older interactions exist, at most ``max_window_extensions`` times (then an error naming
    ``source``, the file the interactions come from)."""
    start, end = cfg.window_start, cfg.window_end
    first_ts = int(interactions["timestamp"].min()) if len(interactions) else 0
    extended = 0
    while True:
        ts = interactions["timestamp"]
        mask = np.ones(len(interactions), dtype=bool)
        if start is not None:
            mask &= ts.to_numpy() >= _epoch(start)
        if end is not None:
            mask &= ts.to_numpy() < _epoch(end)
        in_window = interactions.loc[mask]
        cored = kcore(in_window, cfg.k_core)
        n_items = cored["item_id"].nunique()
        covers_all = start is None or _epoch(start) <= first_ts
        if n_items >= cfg.min_window_items or covers_all:
            break
        if extended == cfg.max_window_extensions:
            raise InputError(
                f"{source}: the review window from {start} keeps {n_items:,} items after the {cfg.k_core}-core, "
                f"fewer than ingest.preprocess.min_window_items ({cfg.min_window_items:,}), after moving its start "
                f"back {extended} year(s), the most ingest.preprocess.max_window_extensions allows; the "
                f"interactions start {iso_day(first_ts)}. Lower min_window_items or raise max_window_extensions"
            )
        log.info("window from %s keeps %d items (< %d): moving the start back one year",
                 start, n_items, cfg.min_window_items)
        start = start.replace(year=start.year - 1)
        extended += 1
    info = {"start": str(start) if start else None, "end": str(end) if end else None,
            "extended_years": extended, "in_window": int(len(in_window)), "after_kcore": int(len(cored))}
    return cored, info


def sliding_samples(interactions: pd.DataFrame, max_history: int) -> pd.DataFrame:
    """One sample per interaction after a user's first: history = up to ``max_history`` previous
    items (oldest first; repeats kept), target = the item, timestamp = its time."""
    ordered = interactions.reset_index(drop=True)
    ordered = ordered.iloc[np.lexsort((np.arange(len(ordered)), ordered["timestamp"].to_numpy(),
                                       ordered["user_id"].to_numpy()))]
    users, histories, targets, times = [], [], [], []
    for user, group in ordered.groupby("user_id", sort=False):
        seq = group["item_id"].tolist()
        stamps = group["timestamp"].tolist()
        for i in range(1, len(seq)):
            users.append(user)
            histories.append(seq[max(0, i - max_history) : i])
            targets.append(seq[i])
            times.append(stamps[i])
    return pd.DataFrame({"user_id": users, "history": histories, "target": targets,
                         "timestamp": np.asarray(times, dtype=np.int64)})


def chronological_split(samples: pd.DataFrame, fractions: list[float]) -> pd.DataFrame:
    """Sort all samples by target time (stable) and cut train/valid/test by ``fractions``."""
    ordered = samples.iloc[np.argsort(samples["timestamp"].to_numpy(), kind="stable")].reset_index(drop=True)
    n = len(ordered)
    n_train = int(n * fractions[0])
    n_valid = int(n * (fractions[0] + fractions[1])) - n_train
    split = np.array(["test"] * n, dtype=object)
    split[:n_train] = "train"
    split[n_train : n_train + n_valid] = "valid"
    ordered["split"] = split
    return ordered


def preprocess(raw: RawCatalog, cfg: PreprocessConfig, resplit: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Raw catalog -> (items, samples, stats)."""
    stats: dict[str, Any] = {"items_raw": int(len(raw.items))}
    if raw.samples is not None:
        # A release pack was filtered and sequenced upstream (its samples refer to every item it
        # ships); only the split can be redone.
        items, samples = raw.items, raw.samples
        if resplit:
            samples = chronological_split(samples.drop(columns="split"), cfg.split)
    else:
        # Readers guarantee non-empty files and interactions that name catalog items; each step
        # below that can still leave nothing says why, and advises only the setting that applies.
        catalog = raw.sources.get("meta") or raw.sources.get("items", "")
        source = raw.sources.get("reviews") or raw.sources.get("interactions", "")
        items, dropped = filter_titles(raw.items, cfg, catalog)
        stats["items_dropped_title"] = dropped
        inter = raw.interactions
        stats["interactions_raw"] = int(len(inter))
        inter = inter.loc[inter["item_id"].isin(set(items["item_id"]))]
        stats["interactions_known_items"] = int(len(inter))
        if inter.empty:
            raise InputError(f"{source}: no interaction names an item that passes the title filter of {catalog} "
                             f"(items dropped: {dropped})")
        first, last = iso_day(int(inter["timestamp"].min())), iso_day(int(inter["timestamp"].max()))
        inter, window = window_kcore(inter, cfg, source)
        stats["window"] = window
        if window["in_window"] == 0:
            raise InputError(
                f"{source}: no interaction falls in the review window [{window['start'] or 'no start'}, "
                f"{window['end'] or 'no end'}); the interactions span {first}..{last}. Set "
                "ingest.preprocess.window_start / window_end to cover them (null: no bound)"
            )
        if inter.empty:
            outside = stats["interactions_known_items"] - window["in_window"]
            raise InputError(
                f"{source}: the {cfg.k_core}-core leaves no interaction: of the {window['in_window']:,} in the "
                f"review window, every one has a user or an item with fewer than {cfg.k_core} interactions. Lower "
                "ingest.preprocess.k_core"
                + (f", or widen window_start / window_end ({outside:,} interactions fall outside)" if outside else "")
            )
        items = items.loc[items["item_id"].isin(set(inter["item_id"]))].reset_index(drop=True)
        samples = chronological_split(sliding_samples(inter, cfg.max_history), cfg.split)
        if samples.empty:
            raise InputError(f"{source}: no samples: no user has two interactions left "
                             f"(ingest.preprocess.k_core is {cfg.k_core})")

    history_len = samples["history"].map(len).to_numpy()
    stats.update({
        "items": int(len(items)),
        "users": int(samples["user_id"].nunique()),
        "samples": {s: int((samples["split"] == s).sum()) for s in SPLITS} | {"total": int(len(samples))},
        "history_length": {"mean": float(history_len.mean()), "min": int(history_len.min()),
                           "max": int(history_len.max())},
    })
    stats.update(raw.notes)
    return items, samples[["user_id", "history", "target", "timestamp", "split"]], stats
