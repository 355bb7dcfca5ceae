"""Causal-LM model folders: loading by URI (local or ``gs://``), and a cheap
check that a folder holds a causal LM.

Production loads Qwen3-1.7B (or any HF causal LM) from a local path or a ``gs://`` folder; the
tiny offline backbone of the CPU profiles is built by :mod:`components.common.training.backbone`.
The code after loading is the same.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from components.common import storage

log = logging.getLogger(__name__)

def local_model_dir(uri: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local ``save_pretrained`` folder for ``uri``: the path itself, or for ``gs://`` a copy
    downloaded once into ``cache_dir`` keyed by the folder's digest."""
    uri = str(uri)
    if storage.is_gcs(uri):
        cache = Path(cache_dir or Path.home() / ".cache" / "sidreasoner" / "models")
        local = cache / storage.digest(uri).split(":", 1)[1][:16]
        if not local.exists():
            with storage.staged_dir(local) as tmp:
                storage.download_dir(uri, tmp)
        uri = str(local)
    path = Path(uri)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{uri}: not a save_pretrained model folder (no config.json)")
    return path


def load_causal_lm(uri: str | Path, cache_dir: str | Path | None = None, **model_kwargs: Any):
    """(model, tokenizer) from a ``save_pretrained`` folder, local or ``gs://`` (downloaded once
    into ``cache_dir`` keyed by the folder's digest)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = local_model_dir(uri, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs)
    return model, tokenizer


def check_causal_lm(uri: str | Path) -> str:
    """Fail early, without loading weights, unless ``uri`` is a complete ``save_pretrained``
    folder (local or ``gs://``) of a model type transformers can load as a causal LM.

    Returns the model type. Raises FileNotFoundError / ValueError naming the URI.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    uri = str(uri)
    config_uri = storage.join(uri, "config.json")
    if storage.is_gcs(uri):
        if not storage.exists(storage.join(uri, storage.MANIFEST)):
            raise FileNotFoundError(f"{uri}: no complete model folder there (no {storage.MANIFEST}; upload it "
                                    "with the storage helpers, or check the URI)")
    elif not Path(uri).is_dir():
        raise FileNotFoundError(f"{uri}: model folder does not exist")
    try:
        config = storage.read_json(config_uri)
    except storage.StorageError:
        raise FileNotFoundError(f"{uri}: not a save_pretrained model folder (no config.json)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_uri}: not valid JSON ({exc})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"{uri}: model_type {model_type!r} is not a causal language model "
                         "(AutoModelForCausalLM cannot load it)")
    return model_type
