"""Settings of the served model (:mod:`components.common.serving`), free of torch and MLflow so that
the config sections embedding them (``retrain.serving``) load without either.

They are the pyfunc's ``model_config``: ``promote`` logs them with the model, and a server may
override any of them when it loads the model (``SERVING_MODEL_CONFIG`` for ``mlflow models
serve``, which the KServe GPU manifest uses to pick vLLM), so one logged model decodes with
transformers on a CPU and with vLLM on a GPU.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from components.common.decoding_config import DecoderSettings, Mode

#: The widest beam a request may ask for (as evaluation's).
MAX_BEAM_WIDTH = 50


class ServingSettings(DecoderSettings):
    """The decoder of the served model, and what a request gets by default and may ask for.

    ``default_k``, ``default_mode``, ``beam_width`` and ``max_reasoning_tokens`` (the last two
    inherited) are the defaults of the request parameters ``k``, ``mode``, ``beam_width`` and
    ``max_reasoning_tokens``: they are written into the model's signature when it is logged, and
    MLflow fills a request's missing parameters from the signature, so they are fixed per logged
    model. ``max_beam_width`` and ``reasoning_token_limit`` bound what a request may ask; the
    other settings choose the decoder and may be overridden when a server loads the model. (The
    names differ from the retrain section's ``k`` and ``mode``: MLflow logs this config as params
    of the promoting run, beside that section's.)"""

    default_k: int = Field(10, ge=1)
    """Items returned per row when a request does not say (request parameter ``k``)."""
    default_mode: Mode = "direct"
    """Decoding mode when a request does not say (request parameter ``mode``)."""
    max_beam_width: int = Field(MAX_BEAM_WIDTH, ge=1, le=MAX_BEAM_WIDTH)
    """Widest beam a request may ask for (a vLLM engine is sized for it)."""
    reasoning_token_limit: int = Field(1024, ge=1)
    """Most reasoning tokens a request may ask for in thinking mode."""
    max_rows: int = Field(256, ge=1)
    """Most rows (users) in one request."""
    max_history: int | None = Field(None, ge=1)
    """Longer histories are cut to their most recent items. Unset in a profile: ``promote`` logs
    the longest history of the run's samples (what the model was trained on)."""
    seed: int = 0
    """Seed of the vLLM engine (decoding is greedy and beam search: no sampling)."""

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> ServingSettings:
        if self.default_k > self.beam_width:
            raise ValueError(f"default_k {self.default_k} is larger than beam_width {self.beam_width}: a ranked "
                             "list has at most as many SIDs as beams")
        if self.beam_width > self.max_beam_width:
            raise ValueError(f"beam_width {self.beam_width} is larger than max_beam_width {self.max_beam_width}")
        if self.max_reasoning_tokens > self.reasoning_token_limit:
            raise ValueError(f"max_reasoning_tokens {self.max_reasoning_tokens} is larger than "
                             f"reasoning_token_limit {self.reasoning_token_limit}")
        if self.engine == "vllm" and self.device == "cpu":
            raise ValueError("engine vllm runs on CUDA only: set device to cuda or auto")
        return self
