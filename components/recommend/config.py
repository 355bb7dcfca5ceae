"""Config section ``recommend``: who gets recommendations, how many, and how the promoted model is
decoded for them (engine, device, beam, shards: the shared decoder's settings)."""

from __future__ import annotations

from pydantic import Field, model_validator

from components.common.decoding_config import DecoderSettings, Mode
from components.common.serving_config import MAX_BEAM_WIDTH


class RecommendConfig(DecoderSettings):
    """Batch recommendations by the model the run just promoted (a scheduled retraining run)."""

    enabled: bool = False
    """Add the step to the DAG, after ``promote``: in runs that retrain through the registry
    (``retrain.registered_model``); a run without it promotes nothing and has no recommend step."""
    users: str | None = None
    """Parquet of the active users (user_id, history: item ids oldest first), local or gs://.
    Unset: every user of the run's ``samples``, with their history as of their last interaction."""
    active_within_days: int | None = Field(None, ge=1)
    """From ``samples``: only users whose last interaction is at most this many days older than
    the newest one. Unset: every user."""
    max_users: int | None = Field(None, ge=1)
    """At most this many users, the most recently active first. Unset: all of them."""
    k: int = Field(10, ge=1)
    """Items per user."""
    mode: Mode = "direct"
    """direct: constrained beam search over SIDs; thinking: greedy reasoning first (costs
    ``max_reasoning_tokens`` decoding steps per user at most)."""
    shards: int = Field(1, ge=1, le=64)
    """Data-parallel shards, as evaluation's: the users are cut into this many contiguous parts,
    each decoded by its own process on its own GPU (cuda:i). 1 on a CPU."""

    @model_validator(mode="after")
    def _check(self) -> RecommendConfig:
        if self.k > self.beam_width:
            raise ValueError(f"k {self.k} is larger than beam_width {self.beam_width}: each user's list has at most "
                             "beam_width SIDs")
        if self.beam_width > MAX_BEAM_WIDTH:
            raise ValueError(f"beam_width {self.beam_width} is above {MAX_BEAM_WIDTH}")
        if self.users is not None and self.active_within_days is not None:
            raise ValueError("active_within_days selects users of the samples; with users (a Parquet of active "
                             "users) leave it unset")
        if self.engine == "vllm" and self.device == "cpu":
            raise ValueError("engine vllm runs on CUDA only: set device to cuda or auto")
        if self.shards > 1 and self.engine == "vllm" and self.vllm.tensor_parallel_size > 1:
            raise ValueError("shards > 1 with vllm.tensor_parallel_size > 1 is not supported: use one or the other")
        return self

    def decoder_settings(self) -> DecoderSettings:
        return DecoderSettings(**{name: getattr(self, name) for name in DecoderSettings.model_fields})
