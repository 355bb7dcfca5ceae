"""Synthetic catalog in the Amazon Reviews 2018 raw format, with a planted structure.

Items belong to office-supply categories and brands; each item has a few *complements* in the
categories that typically follow its own (pens -> paper -> binders ...). A user starts in a
category and mostly buys a complement of the previous item, sometimes a popular item of a
following category, rarely anything popular. So the next item is predictable from the history
(a sequential recommender beats popularity), and titles/descriptions carry the category and
brand (semantic IDs have something to find). A few items with bad titles and reviews outside
the 2016-10..2018-11 window exercise the recipe's filters.

Output: ``reviews.json.gz`` and ``meta.json.gz`` (the names ``ingest`` expects by default).
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import logging
from typing import Any

import numpy as np

from components.common import storage

log = logging.getLogger(__name__)

CATEGORIES: dict[str, dict[str, list[str]]] = {
    "Pens": {"nouns": ["Gel Pen", "Ballpoint Pen", "Fountain Pen", "Rollerball Pen", "Marker Pen"],
             "attrs": ["Fine Point", "Medium Point", "Retractable", "Quick-Dry", "Smooth Ink"]},
    "Paper": {"nouns": ["Copy Paper", "Notebook", "Legal Pad", "Sticky Notes", "Index Cards"],
              "attrs": ["Letter Size", "College Ruled", "Recycled", "Bright White", "Acid-Free"]},
    "Ink & Toner": {"nouns": ["Ink Cartridge", "Toner Cartridge", "Ink Bottle", "Drum Unit"],
                    "attrs": ["High Yield", "Black", "Tri-Color", "Original", "Remanufactured"]},
    "Binders": {"nouns": ["Ring Binder", "Sheet Protectors", "Tab Dividers", "Presentation Binder"],
                "attrs": ["3-Inch", "Heavy Duty", "Clear View", "Durable", "Letter Size"]},
    "Desk Organizers": {"nouns": ["Desk Organizer", "File Tray", "Pen Holder", "Drawer Organizer"],
                        "attrs": ["Mesh", "Bamboo", "Stackable", "Black", "Rotating"]},
    "Labels": {"nouns": ["Address Labels", "Label Maker", "Label Tape", "Shipping Labels"],
               "attrs": ["Laser", "Inkjet", "Removable", "Waterproof", "White"]},
    "Calculators": {"nouns": ["Scientific Calculator", "Graphing Calculator", "Desktop Calculator"],
                    "attrs": ["Solar", "Large Display", "12-Digit", "Programmable", "Dual Power"]},
    "Shredders": {"nouns": ["Paper Shredder", "Shredder Oil", "Shredder Bags"],
                  "attrs": ["Cross-Cut", "Micro-Cut", "8-Sheet", "Quiet", "Heavy Duty"]},
}
#: Which categories usually follow each one.
FOLLOWS: dict[str, list[str]] = {
    "Pens": ["Paper", "Desk Organizers"],
    "Paper": ["Ink & Toner", "Binders"],
    "Ink & Toner": ["Paper", "Shredders"],
    "Binders": ["Labels", "Paper"],
    "Desk Organizers": ["Pens", "Labels"],
    "Labels": ["Binders", "Ink & Toner"],
    "Calculators": ["Paper", "Pens"],
    "Shredders": ["Binders", "Calculators"],
}
BRANDS = ["Aurora", "Bixby", "Corvid", "Delmar", "Everly", "Fenwick", "Galton", "Harlow",
          "Ivers", "Juniper", "Kestrel", "Linden"]
WINDOW_START = dt.datetime(2016, 10, 1, tzinfo=dt.timezone.utc).timestamp()
WINDOW_END = dt.datetime(2018, 11, 15, tzinfo=dt.timezone.utc).timestamp()
DAY = 86400


def _gzip_jsonl(rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:  # mtime=0: byte-identical reruns
        for row in rows:
            gz.write((json.dumps(row, sort_keys=True) + "\n").encode())
    return buf.getvalue()


def make_items(n_items: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    cats = list(CATEGORIES)
    items = []
    for i in range(n_items):
        cat = cats[i % len(cats)]
        vocab = CATEGORIES[cat]
        brand = BRANDS[(i * 7 + i // len(cats)) % len(BRANDS)]
        noun = vocab["nouns"][rng.integers(len(vocab["nouns"]))]
        attrs = rng.choice(vocab["attrs"], size=2, replace=False)
        count = int(rng.choice([1, 2, 3, 5, 6, 10, 12, 24]))
        title = f"{brand} {attrs[0]} {noun}, {attrs[1]}, {count}-Pack (Model {brand[:2].upper()}{1000 + i})"
        description = [
            f"The {brand} {noun.lower()} is a {attrs[0].lower()} choice for {cat.lower()} at home, "
            f"school or the office.",
            f"{attrs[1]} design; pack of {count}.",
        ]
        items.append({
            "asin": f"B{i:09d}",
            "title": title,
            "description": description,
            "brand": brand,
            "category": ["Office Products", "Office & School Supplies", cat],
            "feature": [f"{attrs[0]}", f"{attrs[1]}", f"{count} per pack"],
            "main_cat": "Office Products",
        })
    # Titles the recipe's filter must drop (these items never reach the catalog).
    if n_items >= 50:
        items[3]["title"] = ""
        items[11]["title"] = "Deluxe " * 21 + "Stapler"
        items[19]["title"] = '<span id="parentalAdvisory">Stapler</span>'
    return items


def make_reviews(items: list[dict[str, Any]], n_users: int, rng: np.random.Generator,
                 mean_length: float = 9.0) -> list[dict[str, Any]]:
    n = len(items)
    by_cat: dict[str, np.ndarray] = {c: np.array([i for i, it in enumerate(items) if it["category"][-1] == c])
                                     for c in CATEGORIES}
    # Zipf-like popularity inside each category.
    pop = {c: 1.0 / np.arange(1, len(ix) + 1) ** 0.8 for c, ix in by_cat.items()}
    for c in pop:
        pop[c] = pop[c] / pop[c].sum()
    # Each item: 3 complements drawn from the categories that follow its own.
    complements = []
    for it in items:
        nxt = FOLLOWS[it["category"][-1]]
        complements.append([int(rng.choice(by_cat[nxt[k % len(nxt)]], p=pop[nxt[k % len(nxt)]])) for k in range(3)])
    global_pop = np.concatenate([pop[c] for c in CATEGORIES]) / len(CATEGORIES)
    global_ix = np.concatenate([by_cat[c] for c in CATEGORIES])

    reviews = []
    cats = list(CATEGORIES)
    for u in range(n_users):
        length = int(np.clip(rng.poisson(mean_length), 5, 20))
        cat = cats[rng.integers(len(cats))]
        current = int(rng.choice(by_cat[cat], p=pop[cat]))
        # A few users started before the window (their early reviews are filtered out).
        start = WINDOW_START - 200 * DAY if rng.random() < 0.03 else rng.uniform(WINDOW_START, WINDOW_END - 400 * DAY)
        t = start
        for _ in range(length):
            reviews.append({
                "reviewerID": f"U{u:06d}",
                "asin": items[current]["asin"],
                "unixReviewTime": int(t),
                "overall": float(rng.integers(3, 6)),
                "summary": "Works as described",
                "reviewText": f"Bought the {items[current]['brand']} item; happy with it.",
            })
            t += rng.uniform(1, 20) * DAY
            r = rng.random()
            if r < 0.65:
                current = complements[current][int(rng.choice(3, p=[0.6, 0.3, 0.1]))]
            elif r < 0.9:
                nxt = FOLLOWS[items[current]["category"][-1]][int(rng.integers(2))]
                current = int(rng.choice(by_cat[nxt], p=pop[nxt]))
            else:
                current = int(rng.choice(global_ix, p=global_pop))
    assert len(items) == n
    return reviews


def write_demo_data(out: str, n_items: int = 400, n_users: int = 800, seed: int = 7) -> dict[str, str]:
    """Write ``meta.json.gz`` and ``reviews.json.gz`` under ``out`` (local or gs://)."""
    if n_items < len(CATEGORIES) * 2:
        raise ValueError(f"--items must be at least {len(CATEGORIES) * 2} (two per category)")
    if n_users < 1:
        raise ValueError("--users must be at least 1")
    rng = np.random.default_rng(seed)
    items = make_items(n_items, rng)
    reviews = make_reviews(items, n_users, rng)
    paths = {"meta": storage.join(out, "meta.json.gz"), "reviews": storage.join(out, "reviews.json.gz")}
    storage.write_bytes(paths["meta"], _gzip_jsonl(items))
    storage.write_bytes(paths["reviews"], _gzip_jsonl(reviews))
    log.info("demo data: %d items, %d users, %d reviews -> %s", len(items), n_users, len(reviews), out)
    return paths
