"""The synthetic catalog is deterministic and has a learnable sequential structure."""

from __future__ import annotations

from collections import Counter, defaultdict

from components.common import storage
from components.common.config import parse_section
from components.ingest.config import IngestConfig
from components.ingest.demo_data import write_demo_data
from components.ingest.preprocess import preprocess
from components.ingest.readers import read_catalog


def test_same_seed_same_bytes(tmp_path):
    a = write_demo_data(str(tmp_path / "a"), n_items=60, n_users=50, seed=1)
    b = write_demo_data(str(tmp_path / "b"), n_items=60, n_users=50, seed=1)
    c = write_demo_data(str(tmp_path / "c"), n_items=60, n_users=50, seed=2)
    assert storage.digest(a["reviews"]) == storage.digest(b["reviews"]) != storage.digest(c["reviews"])


def hit_rate(samples, ranker, k=10):
    test = samples[samples.split == "test"]
    return sum(t in ranker(h)[:k] for h, t in zip(test.history, test.target)) / len(test)


def test_next_item_is_predictable_beyond_popularity(demo_data):
    cfg = parse_section(IngestConfig, {"format": "amazon18", "source": str(demo_data),
                                       "preprocess": {"min_window_items": 50}}, "ingest")
    _, samples, _ = preprocess(read_catalog(cfg), cfg.preprocess)
    train = samples[samples.split == "train"]
    popular = [i for i, _ in Counter(train.target).most_common()]
    transitions: dict[str, Counter] = defaultdict(Counter)
    for history, target in zip(train.history, train.target):
        transitions[history[-1]][target] += 1

    def markov(history):
        ranked = [i for i, _ in transitions[history[-1]].most_common()]
        return ranked + [i for i in popular if i not in ranked]

    pop_hr = hit_rate(samples, lambda h: popular)
    markov_hr = hit_rate(samples, markov)
    assert markov_hr > 1.5 * pop_hr, (markov_hr, pop_hr)
