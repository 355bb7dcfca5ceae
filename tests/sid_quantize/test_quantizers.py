"""k-means, Sinkhorn, RQ-KMeans and RQ-VAE on small synthetic data, adversarial inputs included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.sid_quantize.config import CollisionConfig, RQKMeansConfig, RQVAEConfig
from components.sid_quantize.kmeans import kmeans, nearest
from components.sid_quantize.quantizer import CodebooksError, load_quantizer, rq_decode, rq_encode, save_quantizer
from components.sid_quantize.rq_kmeans import train_rq_kmeans
from components.sid_quantize.rq_vae import train_rq_vae

TINY_VAE = RQVAEConfig(hidden_dims=[32], code_dim=8, batch_size=64, epochs=30, warmup_epochs=2, eval_every=5,
                       patience=None, kmeans_init_iters=20)


def blobs(n_per: int = 40, centers: int = 8, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Separated clusters of unit vectors (sentence encoders' embeddings have norm 1)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centers, dim, generator=g) * 5
    labels = np.repeat(np.arange(centers), n_per)
    x = means[labels] + 0.3 * torch.randn(len(labels), dim, generator=g)
    return x / x.norm(dim=1, keepdim=True), labels


def test_kmeans_recovers_separated_clusters_and_is_seeded():
    x, labels = blobs()
    centroids = kmeans(x, 8, iters=50, generator=torch.Generator().manual_seed(1))
    assign, _ = nearest(x, centroids)
    # every true cluster maps onto exactly one centroid
    pairs = {(int(a), int(b)) for a, b in zip(labels, assign)}
    assert len(pairs) == 8 and len({b for _, b in pairs}) == 8
    again = kmeans(x, 8, iters=50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(centroids, again)


def test_kmeans_on_all_identical_points_and_too_few_points():
    x = torch.ones(20, 4)
    centroids = kmeans(x, 5, iters=10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(centroids).all() and torch.allclose(centroids, torch.ones(5, 4))
    with pytest.raises(ValueError, match="at least as many points as clusters"):
        kmeans(torch.randn(3, 4), 5, iters=10, generator=torch.Generator())


def test_balanced_kmeans_evens_out_cluster_sizes():
    g = torch.Generator().manual_seed(0)
    # one dense blob of 180 points and 20 scattered ones: plain k-means leaves most clusters tiny
    x = torch.cat([0.05 * torch.randn(180, 2, generator=g), 4 * torch.randn(20, 2, generator=g)])
    sizes = []
    for balanced in (False, True):
        c = kmeans(x, 4, iters=30, generator=torch.Generator().manual_seed(0), balanced=balanced)
        sizes.append(np.bincount(nearest(x, c)[0].numpy(), minlength=4).max())
    assert sizes[1] < sizes[0]


def test_rq_kmeans_levels_reduce_error_and_are_deterministic():
    x, _ = blobs(dim=16)
    cfg = RQKMeansConfig(iters=30)
    model, info = train_rq_kmeans(x, [8, 8, 8], cfg, CollisionConfig(), seed=3)
    residual = [level["residual_mse"] for level in info["levels"]]
    assert residual[0] > residual[1] > residual[2]
    codes = model.encode(x)
    assert codes.shape == (len(x), 3) and codes.max() < 8
    assert torch.allclose(model.reconstruct(codes), rq_decode(codes, model.codebooks))
    again, _ = train_rq_kmeans(x, [8, 8, 8], cfg, CollisionConfig(), seed=3)
    assert torch.equal(again.encode(x), codes)
    other, _ = train_rq_kmeans(x, [8, 8, 8], cfg, CollisionConfig(), seed=4)
    assert not torch.equal(other.levels[2], model.levels[2])


def test_rq_kmeans_balanced_and_sampled_training():
    x, _ = blobs(dim=8)
    cfg = RQKMeansConfig(iters=10, balanced=True, max_train_points=100)
    model, info = train_rq_kmeans(x, [8, 4], cfg, CollisionConfig(), seed=0)
    assert info["train_points"] == 100 and model.encode(x).shape == (len(x), 2)
    with pytest.raises(ValueError, match="every code needs at least one point"):
        train_rq_kmeans(x, [8, 4], RQKMeansConfig(max_train_points=5), CollisionConfig(), seed=0)


def test_rq_vae_trains_keeps_best_checkpoint_and_is_deterministic():
    x, _ = blobs(dim=16)
    model, info = train_rq_vae(x, [8, 8], TINY_VAE, seed=5)
    evaluations = info["evaluations"]
    assert [e["epoch"] for e in evaluations] == [5, 10, 15, 20, 25, 30]
    best = min(evaluations, key=lambda e: (e["collision_rate"], e["reconstruction_mse"]))
    assert info["best"]["epoch"] == best["epoch"]
    # the returned weights are the best checkpoint's
    codes = model.encode(x)
    mse = float(((model.reconstruct(codes) - x) ** 2).mean())
    assert mse == pytest.approx(best["reconstruction_mse"], rel=1e-5)
    assert evaluations[-1]["reconstruction_mse"] < evaluations[0]["reconstruction_mse"]
    again, _ = train_rq_vae(x, [8, 8], TINY_VAE, seed=5)
    assert torch.equal(again.encode(x), codes)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_rq_vae_parameters_change_and_codebooks_start_from_kmeans():
    x, _ = blobs(dim=16)
    cfg = TINY_VAE.model_copy(update={"epochs": 1, "eval_every": 1})
    model, _ = train_rq_vae(x, [8, 8], cfg, seed=0)
    assert all(float(level.detach().abs().sum()) > 0 for level in model.levels)  # initialised (zeros before)
    longer, _ = train_rq_vae(x, [8, 8], cfg.model_copy(update={"epochs": 10, "eval_every": 10}), seed=0)
    assert not torch.equal(model.encoder[0].weight, longer.encoder[0].weight)
    assert not torch.equal(model.levels[0], longer.levels[0])


def test_rq_vae_early_stopping():
    x, _ = blobs(dim=16)
    _, info = train_rq_vae(x, [8, 8], TINY_VAE.model_copy(update={"epochs": 500, "patience": 2}), seed=0)
    assert info["epochs_run"] < 500


def test_codebooks_round_trip(tmp_path):
    x, _ = blobs(dim=16)
    for model in (train_rq_kmeans(x, [8, 4], RQKMeansConfig(iters=5), CollisionConfig(), 0)[0],
                  train_rq_vae(x, [8, 4], TINY_VAE.model_copy(update={"epochs": 2}), 0)[0]):
        folder = tmp_path / model.method
        folder.mkdir()
        save_quantizer(model, folder, {"seed": 0})
        loaded, config = load_quantizer(folder)
        assert config["method"] == model.method and config["levels"] == 2 and config["seed"] == 0
        assert torch.equal(loaded.encode(x), model.encode(x))
    (tmp_path / "rq_vae" / "config.json").write_text('{"format_version": 1, "method": "nope"}')
    with pytest.raises(CodebooksError, match="unknown method 'nope'"):
        load_quantizer(tmp_path / "rq_vae")
    with pytest.raises(CodebooksError, match="not a codebooks artifact"):
        load_quantizer(tmp_path)


def test_rq_encode_is_greedy_residual():
    codebooks = [torch.tensor([[0.0, 0.0], [10.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])]
    z = torch.tensor([[9.0, 1.2], [0.5, -0.2]])
    assert rq_encode(z, codebooks).tolist() == [[1, 1], [0, 0]]
