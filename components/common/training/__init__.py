"""The training library: what the training stages (align_sft, reason_sft, grpo) are thin recipes over.

* :mod:`.settings`: the config sections (trainer, SFT, GRPO, launch, checkpoints) with the
  validated ``trainer_args`` passthrough to TRL;
* :mod:`.backbone`: the starting model, a saved causal LM or the tiny offline one, extended with
  the SID tokens;
* :mod:`.launch`: hardware pre-flight, the job of the training processes, ``accelerate launch``,
  and the stage-side driver (train, resume, or reuse a finished job);
* :mod:`.checkpoints`: preemption-safe checkpoints in object storage;
* :mod:`.sft`, :mod:`.grpo`: the engines (encoding and SFTTrainer; GRPOTrainer with the stage's
  rewards), each with a typed payload; :mod:`.engine`: what both share inside the training
  processes; :mod:`.callbacks`: their HF Trainer callbacks;
* :mod:`.models`: the trained model in the stage's stats and in MLflow.

Modules that import torch/transformers/trl do so inside functions, so that reading a config
(which imports :mod:`.settings`) stays fast.
"""
