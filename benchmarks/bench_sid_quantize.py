"""SID quantization: 3 x 256 RQ-KMeans vs faiss's ResidualQuantizer on the same 100,000 random
384-d vectors (time and reconstruction error, same process), and incremental SID assignment
throughput (items/s).

faiss runs with its defaults: 10 k-means iterations per level on at most 256 points per centroid
(65,536 of the 100,000 vectors) and beam-search encoding (beam 5). Ours gets the same 10 Lloyd
iterations per level on all 100,000 vectors and encodes greedily: on structureless random data,
centroids fitted on a subsample do not generalise to the rest (our error on a 65,536 sample is
~0.94 vs ~0.92), and the full pass is still far cheaper than faiss's beam search. Target: our
time <= 2x faiss's at equal or lower reconstruction error.

Incremental assignment: 90,000 vectors hold SIDs from a previous run; 10,000 new vectors are
encoded with the frozen codebooks and made unique against every existing SID (the stage's path:
latents -> greedy residual codes -> Sinkhorn + nearest-free collision resolution).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from components.sid_quantize.collisions import resolve_collisions
from components.sid_quantize.config import CollisionConfig, RQKMeansConfig
from components.sid_quantize.metrics import collisions
from components.sid_quantize.quantizer import rq_encode
from components.sid_quantize.rq_kmeans import train_rq_kmeans

N, DIM, LEVELS, BITS = 100_000, 384, 3, 8
EXISTING = 90_000


def _mse(x: np.ndarray, x_hat: np.ndarray) -> float:
    return float(((x - x_hat) ** 2).mean())


def _faiss(x: np.ndarray) -> dict:
    import faiss

    start = time.perf_counter()
    rq = faiss.ResidualQuantizer(DIM, LEVELS, BITS)
    rq.train(x)
    codes = rq.compute_codes(x)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "reconstruction_mse": _mse(x, rq.decode(codes)),
            "settings": {"niter": rq.cp.niter, "max_points_per_centroid": rq.cp.max_points_per_centroid,
                         "max_beam_size": rq.max_beam_size, "threads": faiss.omp_get_max_threads()},
            "version": faiss.__version__}


def _ours(x: np.ndarray, cfg: RQKMeansConfig):
    xt = torch.from_numpy(x)
    start = time.perf_counter()
    model, _ = train_rq_kmeans(xt, [1 << BITS] * LEVELS, cfg, CollisionConfig(), seed=0)
    codes = model.encode(xt)
    seconds = time.perf_counter() - start
    result = {"seconds": round(seconds, 2), "reconstruction_mse": _mse(x, model.reconstruct(codes).numpy()),
              "settings": {**cfg.model_dump(), "threads": torch.get_num_threads()}, "torch": torch.__version__}
    return result, model, codes


def _incremental(x: np.ndarray, model, codes: torch.Tensor) -> dict:
    existing = {tuple(row) for row in codes[:EXISTING].tolist()}  # unique per SID; duplicates fold
    new = torch.from_numpy(x[EXISTING:])
    start = time.perf_counter()
    codebooks = [c.detach() for c in model.codebooks]
    z = model.latents(new)
    greedy = rq_encode(z, codebooks)
    final, report = resolve_collisions(z, greedy, codebooks, CollisionConfig(), occupied=existing)
    seconds = time.perf_counter() - start
    assert collisions(np.concatenate([np.array(sorted(existing)), final]))["duplicate_sids"] == 0
    return {"existing_sids": len(existing), "new_items": len(new), "seconds": round(seconds, 3),
            "items_per_s": round(len(new) / seconds), "resolution": report}


def run() -> dict:
    x = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    faiss_result = _faiss(x)
    cfg = RQKMeansConfig(iters=faiss_result["settings"]["niter"])  # faiss's iterations, all the data
    ours, model, codes = _ours(x, cfg)
    incremental = _incremental(x, model, codes)
    time_ratio = ours["seconds"] / faiss_result["seconds"]
    return {
        "data": {"vectors": N, "dim": DIM, "levels": LEVELS, "codebook_size": 1 << BITS},
        "faiss_residual_quantizer": faiss_result,
        "rq_kmeans": ours,
        "incremental_assignment": incremental,
        "summary": {
            "rq_kmeans_s": ours["seconds"], "faiss_s": faiss_result["seconds"],
            "time_ratio_vs_faiss": round(time_ratio, 2),
            "rq_kmeans_mse": round(ours["reconstruction_mse"], 5),
            "faiss_mse": round(faiss_result["reconstruction_mse"], 5),
            "target_met": time_ratio <= 2.0 and ours["reconstruction_mse"] <= faiss_result["reconstruction_mse"],
            "incremental_items_per_s": incremental["items_per_s"],
        },
    }
