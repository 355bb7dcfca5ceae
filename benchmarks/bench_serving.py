"""Serving on the CPU: the registered pyfunc in process vs behind ``mlflow models serve`` (HTTP).

Setup (one process plus the server's): the demo's catalog (``sidreasoner demo-data`` defaults,
ingested with the demo profile's preprocessing: ~250 items), unique random SIDs of the demo's 3 x
16 codebooks, and a model of the demo profile's shape (tiny Qwen3: 2 layers, hidden 64, a 2,000-token
tokenizer trained on the catalog, the SID tokens added; untrained weights decode at the trained
model's speed), packaged by ``components.common.serving`` as ``promote`` packages it. The histories
are the catalog's users' current ones (at most 10 items, as the demo trains on).

* ``single``: one-row requests, direct mode, beam 10, k 10, one after the other: p50 / p99 latency
  in process (``PyFuncModel.predict``) and over HTTP (``POST /invocations``, JSON).
* ``batch``: 64-row requests, same decoding: rows/s both ways; target HTTP time <= 1.2x the
  in-process time (ABAB order: drift on the shared machine hits both alike).
* ``thinking``: one-row requests in thinking mode with reasoning budgets of 16 and 64 tokens
  (an untrained model never closes its think block, so it spends the whole budget): the latency,
  and the marginal cost of a reasoning token.

Both sides decode alike: with one torch thread (on a shared 2-core machine two OpenMP threads
spin against the neighbours' load and make timings meaningless), and in a worker thread, as the
scoring server runs ``predict`` (``asyncio.to_thread``); so the ratio is the cost of HTTP, JSON
and MLflow's request parsing.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from components.common import artifacts, storage
from components.common.config import parse_section
from components.common.processes import interpreter_environ
from components.common.serving import ServedCatalog, current_histories, save_servable, trained_history_length
from components.common.serving_config import ServingSettings
from components.common.training import backbone
from components.ingest.config import IngestConfig
from components.ingest.demo_data import write_demo_data
from components.ingest.preprocess import preprocess
from components.ingest.readers import read_catalog
from tests.conftest import free_port, stop, wait_http

CODEBOOKS = (16, 16, 16)  # the demo profile's
SHAPE = {"vocab_size": 2000, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
         "num_kv_heads": 2}
SINGLE_REQUESTS, BATCH, BATCH_REPEATS, THINKING_REPEATS = 100, 64, 5, 5
BUDGETS = (16, 64)
TARGET_HTTP_RATIO = 1.2
THREADS = 1


def build(root: Path) -> tuple[Path, list[list[str]], int]:
    """The packaged demo-sized model, the users' histories and the catalog's size."""
    data = root / "demo-data"
    write_demo_data(str(data), n_items=400, n_users=800, seed=7)
    cfg = parse_section(IngestConfig, {"format": "amazon18", "source": str(data),
                                       "preprocess": {"min_window_items": 100}}, "ingest")
    items, samples, _ = preprocess(read_catalog(cfg), cfg.preprocess)
    storage.write_parquet(artifacts.items_table(items), root / "items.parquet")
    storage.write_parquet(artifacts.samples_table(samples), root / "samples.parquet")
    codes = random.Random(0).sample(range(int(np.prod(CODEBOOKS))), len(items))
    sid_codes = [(c // 256, c // 16 % 16, c % 16) for c in codes]
    storage.write_parquet(artifacts.sid_map_table(list(items["item_id"]), sid_codes, ["active"] * len(items),
                                                  CODEBOOKS, None), root / "sid_map.parquet")
    catalog = artifacts.read_catalog(str(root / "sid_map.parquet"), str(root / "items.parquet"))
    tiny = backbone.build_tiny(root / "tiny", str(root / "items.parquet"), None, seed=0, **SHAPE)
    backbone.extend_with_sids(tiny, root / "model", catalog.tokens, root / "cache", seed=0)
    read = artifacts.read_samples(str(root / "samples.parquet"))
    users = current_histories(read, trained_history_length(read))
    settings = ServingSettings(device="cpu", max_history=trained_history_length(read), max_reasoning_tokens=64,
                               reasoning_token_limit=64)
    path = save_servable(root / "servable", model_dir=root / "model", catalog=ServedCatalog.from_catalog(catalog),
                         settings=settings, example=users[0], metadata={"benchmark": "serving"})
    return path, [u.history for u in users], len(catalog.item_ids)


def frame(histories: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [f"u{i}" for i in range(len(histories))], "history": histories})


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(THREADS)


#: Where in-process requests run: one worker thread, as the scoring server's.
WORKER = ThreadPoolExecutor(1, initializer=_one_torch_thread)


def in_process(model, histories: list[list[str]], params: dict) -> float:
    def call() -> float:
        began = time.perf_counter()
        answer = model.predict(frame(histories), params=params)
        elapsed = time.perf_counter() - began
        assert len(answer) == len(histories) and all(len(i) == params["k"] for i in answer["item_ids"])
        return elapsed

    return WORKER.submit(call).result()


def over_http(url: str, histories: list[list[str]], params: dict) -> float:
    body = json.dumps({"dataframe_split": frame(histories).to_dict(orient="split", index=False),
                       "params": params}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    elapsed = time.perf_counter() - began
    assert len(answer["predictions"]) == len(histories)
    return elapsed


def serve(path: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**interpreter_environ(), "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(path), "--env-manager",
                             "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/ping", 300, proc)
    return proc, url


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "n": len(ms)}


def run() -> dict:
    import mlflow

    direct = {"k": 10, "beam_width": 10, "mode": "direct"}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        path, histories, items = build(Path(tmp))
        rows = [histories[i % len(histories)] for i in range(BATCH)]
        model = mlflow.pyfunc.load_model(str(path))
        proc, url = serve(path, Path(tmp) / "server.log")
        try:
            for call in (lambda: in_process(model, rows[:8], direct), lambda: over_http(url, rows[:8], direct)):
                call()  # warm-up: first-call allocations on both sides
            single = {"in_process": [], "http": []}
            for i in range(SINGLE_REQUESTS):
                history = [rows[i % BATCH]]
                single["in_process"].append(in_process(model, history, direct))
                single["http"].append(over_http(url, history, direct))
            batch = {"in_process": [], "http": []}
            for r in range(BATCH_REPEATS):  # ABAB
                for which in (("in_process", "http") if r % 2 == 0 else ("http", "in_process")):
                    batch[which].append(in_process(model, rows, direct) if which == "in_process"
                                        else over_http(url, rows, direct))
            thinking = {}
            for budget in BUDGETS:
                params = {**direct, "mode": "thinking", "max_reasoning_tokens": budget}
                spent = WORKER.submit(model.predict, frame(rows[:1]), params=params).result()["reasoning_tokens"][0]
                thinking[budget] = {"reasoning_tokens": int(spent), "in_process": [
                    in_process(model, [rows[i]], params) for i in range(THINKING_REPEATS)]}
        finally:
            stop(proc)

    batch_s = {k: statistics.median(v) for k, v in batch.items()}
    think_ms = {b: 1000 * statistics.median(t["in_process"]) for b, t in thinking.items()}
    low, high = BUDGETS
    tokens = {b: t["reasoning_tokens"] for b, t in thinking.items()}
    per_token_ms = (think_ms[high] - think_ms[low]) / (tokens[high] - tokens[low])
    http_ratio = batch_s["http"] / batch_s["in_process"]
    summary = {
        "single_direct_beam10_k10": {k: percentiles(v) for k, v in single.items()},
        "batch64_rows_per_s": {k: BATCH / s for k, s in batch_s.items()},
        "batch64_http_over_in_process": http_ratio,
        "batch64_http_target": TARGET_HTTP_RATIO, "batch64_http_within_target": http_ratio <= TARGET_HTTP_RATIO,
        "thinking_single_ms": {str(b): ms for b, ms in think_ms.items()},
        "thinking_reasoning_tokens": {str(b): n for b, n in tokens.items()},
        "thinking_ms_per_reasoning_token": per_token_ms,
        "direct_single_in_process_p50_ms": percentiles(single["in_process"])["p50_ms"],
    }
    return {"summary": summary, "catalog_items": items, "torch_threads": THREADS, "codebooks": list(CODEBOOKS),
            "model_shape": SHAPE,
            "requests": {"single": SINGLE_REQUESTS, "batch": BATCH, "batch_repeats": BATCH_REPEATS},
            "raw_seconds": {"single": single, "batch": batch,
                            "thinking": {str(b): t["in_process"] for b, t in thinking.items()}}}
