"""What both quantizers share: residual encoding over a list of codebooks, and the codebooks
artifact (a folder: ``weights.safetensors`` + ``config.json``).

A quantizer maps an embedding ``x`` to a latent ``z`` (identity for RQ-KMeans, an MLP for the
RQ-VAE), quantizes ``z`` level by level (each level's codebook quantizes the residual the
previous levels left), and maps the summed codebook vectors back to embedding space. Collision
resolution and incremental assignment work on latents and codebooks only, so they serve both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from components.common import storage
from components.common.errors import InputError
from components.sid_quantize.kmeans import CHUNK, nearest

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"


class CodebooksError(InputError):
    """A codebooks artifact is missing, malformed, or does not fit the run's config."""


def rq_encode(z: torch.Tensor, codebooks: list[torch.Tensor]) -> torch.Tensor:
    """Greedy residual codes (n, levels): each level takes the code nearest to the residual."""
    codes = torch.empty(z.shape[0], len(codebooks), dtype=torch.long, device=z.device)
    residual = z.clone()
    for level, codebook in enumerate(codebooks):
        index, _ = nearest(residual, codebook)
        codes[:, level] = index
        residual -= codebook[index]
    return codes


def rq_decode(codes: torch.Tensor, codebooks: list[torch.Tensor]) -> torch.Tensor:
    """Sum of the codebook vectors selected by ``codes`` (the quantized latent)."""
    out = torch.zeros(codes.shape[0], codebooks[0].shape[1], dtype=codebooks[0].dtype, device=codes.device)
    for level, codebook in enumerate(codebooks):
        out += codebook[codes[:, level]]
    return out


def residual_before(z: torch.Tensor, codes: torch.Tensor, codebooks: list[torch.Tensor], level: int) -> torch.Tensor:
    """What level ``level`` quantizes: ``z`` minus the vectors of levels ``0..level-1``."""
    residual = z.clone()
    for lv in range(level):
        residual -= codebooks[lv][codes[:, lv]]
    return residual


class Quantizer(nn.Module):
    """Base of RQKMeans and RQVAE. Subclasses define ``method``, ``codebooks``, ``latent``,
    ``decode_latent`` and ``architecture`` (what ``config.json`` needs to rebuild them)."""

    method: str = ""

    @property
    def codebooks(self) -> list[torch.Tensor]:
        raise NotImplementedError

    @property
    def codebook_sizes(self) -> list[int]:
        return [int(c.shape[0]) for c in self.codebooks]

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_latent(self, zq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def architecture(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.codebooks[0].device

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """``latent`` in eval mode, in blocks (bounded memory for large catalogs)."""
        self.eval()
        return torch.cat([self.latent(x[i : i + CHUNK]) for i in range(0, x.shape[0], CHUNK)])

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Greedy codes of embeddings ``x`` (n, levels)."""
        return rq_encode(self.latents(x), [c.detach() for c in self.codebooks])

    @torch.no_grad()
    def reconstruct(self, codes: torch.Tensor) -> torch.Tensor:
        """Embeddings decoded from ``codes``."""
        self.eval()
        zq = rq_decode(codes, [c.detach() for c in self.codebooks])
        return torch.cat([self.decode_latent(zq[i : i + CHUNK]) for i in range(0, zq.shape[0], CHUNK)])


def _classes() -> dict[str, type[Quantizer]]:
    from components.sid_quantize.rq_kmeans import RQKMeans
    from components.sid_quantize.rq_vae import RQVAE

    return {RQKMeans.method: RQKMeans, RQVAE.method: RQVAE}


def save_quantizer(quantizer: Quantizer, folder: Path, config: dict[str, Any]) -> str:
    """Write ``weights.safetensors`` and ``config.json`` (architecture + ``config``) to ``folder``;
    returns the SID space these codebooks define (the weights' digest, also in ``config.json``)."""
    state = {k: v.detach().cpu().contiguous() for k, v in quantizer.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"method": quantizer.method})
    sid_space = storage.file_digest(folder / WEIGHTS_FILE)
    document = {
        "format_version": FORMAT_VERSION,
        "method": quantizer.method,
        "levels": len(quantizer.codebook_sizes),
        "codebook_sizes": quantizer.codebook_sizes,
        "architecture": quantizer.architecture(),
        **config,
        "sid_space": sid_space,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return sid_space


def load_quantizer(folder: Path, device: torch.device | str = "cpu") -> tuple[Quantizer, dict[str, Any]]:
    """Rebuild the quantizer stored in a local codebooks folder; returns it and its config."""
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise CodebooksError(f"{folder}: not a codebooks artifact (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CodebooksError(f"{config_path}: invalid JSON ({exc})") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise CodebooksError(f"{config_path}: format_version {config.get('format_version')!r} is not "
                             f"{FORMAT_VERSION}")
    classes = _classes()
    if config.get("method") not in classes:
        raise CodebooksError(f"{config_path}: unknown method {config.get('method')!r}; known: {sorted(classes)}")
    quantizer = classes[config["method"]](**config["architecture"])
    try:
        quantizer.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as exc:
        raise CodebooksError(f"{weights_path}: weights do not match the architecture in {CONFIG_FILE}: {exc}") from None
    quantizer.to(device).eval()
    if quantizer.codebook_sizes != config["codebook_sizes"]:
        raise CodebooksError(f"{folder}: weights have codebook sizes {quantizer.codebook_sizes}, config says "
                             f"{config['codebook_sizes']}")
    return quantizer, config
