"""Shared training machinery: launch commands, DeepSpeed config files, rollout planning,
hardware pre-flight, and checkpoints published to (and restored from) local or GCS storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common import storage
from components.common.config import ConfigError, parse_section
from components.common.training import checkpoints, launch
from components.common.training.grpo import RewardSetup, grpo_arguments
from components.common.training.settings import GRPOSettings, LaunchConfig, TrainerSettings, settings_of
from components.grpo import rollout
from components.grpo.config import GRPOStageConfig


def test_launch_command_is_a_valid_accelerate_launch():
    from accelerate.commands.launch import launch_command_parser

    settings = LaunchConfig(strategy="zero3", main_process_port=29555)
    cmd = launch.launch_command("/work/job.json", settings, num_processes=4, bf16=True)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(cmd[3:])
    assert (args.num_processes, args.num_machines, args.mixed_precision, args.main_process_port) == \
        (4, 1, "bf16", 29555)
    assert args.multi_gpu and args.module
    assert args.training_script == "components.common.training.launch"
    assert args.training_script_args == ["/work/job.json"]
    single = launch_command_parser().parse_args(launch.launch_command("j.json", settings, 1, bf16=False)[3:])
    assert not single.multi_gpu and single.num_processes == 1 and single.mixed_precision == "no"


@pytest.mark.parametrize(("strategy", "stage"), [("zero2", 2), ("zero3", 3)])
def test_deepspeed_files_resolve_every_auto_value(strategy, stage, tmp_path):
    """The Trainer fills every "auto" of the shipped files from the training arguments."""
    from transformers import AutoModelForCausalLM, Qwen3Config
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config
    from trl import SFTConfig

    path = launch.DEEPSPEED_CONFIGS[strategy]
    assert path.is_file() and path.parent == Path(launch.__file__).parent / "deepspeed"
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=2,
                     gradient_accumulation_steps=8, report_to=[])
    model = AutoModelForCausalLM.from_config(Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                         num_hidden_layers=1, num_attention_heads=2,
                                                         num_key_value_heads=1, head_dim=8))
    config = HfTrainerDeepSpeedConfig(str(path))
    try:
        config.trainer_config_process(args)
        config.trainer_config_finalize(args, model, num_training_steps=100)
        resolved = config.config
    finally:
        unset_hf_deepspeed_config()
    assert '"auto"' not in json.dumps(resolved)
    assert resolved["zero_optimization"]["stage"] == stage
    assert (resolved["train_micro_batch_size_per_gpu"], resolved["gradient_accumulation_steps"],
            resolved["train_batch_size"]) == (2, 8, 16)
    if stage == 3:  # the final model is gathered to one file by the main process
        assert resolved["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_hardware_preflight():
    cpu = TrainerSettings(bf16=False)
    launch.check_hardware(cpu, "s", gpus=0)
    with pytest.raises(ConfigError, match="s.bf16: bf16 was requested but no GPU is visible"):
        launch.check_hardware(TrainerSettings(bf16=True), "s", gpus=0)
    with pytest.raises(ConfigError, match="s.launch.num_processes: 2 processes requested but no GPU"):
        launch.check_hardware(TrainerSettings(bf16=False, launch={"num_processes": 2}), "s", gpus=0)
    with pytest.raises(ConfigError, match="8 processes requested but only 4 GPU"):
        launch.check_hardware(TrainerSettings(launch={"num_processes": 8}), "s", gpus=4)
    assert launch.world_size(cpu, 0) == 1
    assert launch.world_size(TrainerSettings(), 4) == 4
    assert launch.world_size(TrainerSettings(launch={"num_processes": 2}), 4) == 2
    assert launch.gradient_accumulation(1024, 1, 4, "g") == 256
    with pytest.raises(ConfigError, match=r"g \(1000\) must be a multiple of per_device_batch_size x processes "
                                          r"\(1 x 3 = 3\)"):
        launch.gradient_accumulation(1000, 1, 3, "g")


def test_trainer_arguments_build_the_recipes_grpo_batches(tmp_path):
    from trl import GRPOConfig

    cfg = parse_section(GRPOStageConfig, {"bf16": False, "gradient_checkpointing": False}, "grpo")
    job = launch.TrainJob(entry="m:f", stage="grpo", payload={}, output_dir=str(tmp_path), final_dir=str(tmp_path),
                            checkpoint_uri=str(tmp_path), checkpoint_every=10, keep_checkpoints=2)
    accumulation = launch.gradient_accumulation(cfg.rollout_batch_size, cfg.per_device_batch_size, 1, "b")
    args = GRPOConfig(**grpo_arguments(cfg, job, accumulation, use_vllm=False, vllm_server_url=None,
                                       rewards=RewardSetup(funcs=[], weights=[1.0, 0.1])))
    assert args.generation_batch_size == 4096 == 256 * args.num_generations
    assert args.steps_per_generation == args.gradient_accumulation_steps == 256  # one update per generation
    assert (args.beta, args.loss_type, args.learning_rate, args.lr_scheduler_type.value, args.epsilon) == \
        (0.001, "grpo", 5e-7, "constant", 0.2)
    assert args.scale_rewards == "group" and args.max_completion_length == 1024 and args.max_steps == 100


def test_rollout_plans(monkeypatch):
    cpu = parse_section(GRPOStageConfig, {"bf16": False}, "grpo")
    assert rollout.plan_rollouts(cpu, gpus=0) == rollout.RolloutPlan(engine="hf")
    with pytest.raises(ConfigError, match="vllm is not installed"):
        rollout.plan_rollouts(GRPOStageConfig(), gpus=4)
    monkeypatch.setattr(rollout.importlib.util, "find_spec", lambda name: object())  # as in the GPU image
    colocate = rollout.plan_rollouts(GRPOStageConfig(), gpus=4)
    assert (colocate.engine, colocate.vllm_mode, colocate.train_gpus, colocate.server_gpus) == \
        ("vllm", "colocate", [0, 1, 2, 3], [])
    served = GRPOStageConfig(rollout={"vllm_mode": "server", "server": {"tensor_parallel_size": 2}})
    plan = rollout.plan_rollouts(served, gpus=4)
    assert (plan.server_gpus, plan.train_gpus, plan.server_url) == ([0, 1], [2, 3], "http://127.0.0.1:8000")
    external = GRPOStageConfig(rollout={"vllm_mode": "server", "server": {"base_url": "http://vllm:8000"}})
    assert rollout.plan_rollouts(external, gpus=2).train_gpus == [0, 1]
    with pytest.raises(ConfigError, match=r"grpo.rollout.server.tensor_parallel_size: 2 GPU\(s\) for the vLLM server "
                                          r"leaves none of the 2 visible GPU"):
        rollout.plan_rollouts(GRPOStageConfig(rollout={"vllm_mode": "server", "server": {"tensor_parallel_size": 2}}),
                              gpus=2)
    hf_on_gpu = rollout.plan_rollouts(GRPOStageConfig(rollout={"engine": "hf"}), gpus=2)
    assert (hf_on_gpu.engine, hf_on_gpu.train_gpus) == ("hf", [0, 1])


def test_server_mode_has_its_own_settings():
    """A dedicated server GPU gets vLLM's whole-GPU share, not the colocated engine's 0.3 of a
    training GPU; its GPUs are one tensor-parallel group (TRL's vllm-serve refuses data
    parallelism for dense models)."""
    from trl.scripts.vllm_serve import ScriptArguments

    served = GRPOStageConfig(rollout={"vllm_mode": "server"})
    assert served.rollout.vllm_gpu_memory_utilization == 0.3  # the colocated engine's share
    assert served.rollout.server.gpu_memory_utilization == 0.9 == ScriptArguments.gpu_memory_utilization
    assert served.rollout.server.tensor_parallel_size == 1 and ScriptArguments.data_parallel_size == 1
    assert "keep this at 1" in ScriptArguments.__dataclass_fields__["data_parallel_size"].metadata["help"]
    with pytest.raises(ValueError, match="server: only used with vllm_mode 'server'"):
        GRPOStageConfig(rollout={"server": {"gpu_memory_utilization": 0.5}})
    with pytest.raises(ValueError, match="server.base_url: set, but engine is 'hf'"):
        GRPOStageConfig(rollout={"engine": "hf", "vllm_mode": "server", "server": {"base_url": "http://v:8000"}})
    # the engine settings a stage hands its training processes keep the server section
    assert settings_of(served, GRPOSettings).rollout.server == served.rollout.server


def test_vllm_server_command_parses_as_trl_vllm_serve():
    from trl.scripts.vllm_serve import make_parser

    cfg = GRPOStageConfig(rollout={"vllm_mode": "server", "vllm_gpu_memory_utilization": 0.25,
                                   "server": {"tensor_parallel_size": 2, "port": 8123, "gpu_memory_utilization": 0.85}})
    cmd = rollout.vllm_server_command(cfg, "/models/reasoning")
    assert cmd[1:3] == ["-m", "trl.scripts.vllm_serve"]
    (args,) = make_parser().parse_args_and_config(cmd[3:])
    assert (args.model, args.port, args.data_parallel_size, args.tensor_parallel_size, args.gpu_memory_utilization,
            args.max_model_len, args.dtype) == ("/models/reasoning", 8123, 1, 2, 0.85, 2048, "bfloat16")


def test_the_kl_term_is_the_recipes_low_var_kl_unless_asked(tmp_path):
    """TRL 1.16 multiplies the k3 KL by the importance ratio by default (use_bias_correction_kl);
    the recipe's low_var_kl is the plain k3 term. Both through the GRPOConfig the engine builds."""
    from trl import GRPOConfig

    job = launch.TrainJob(entry="m:f", stage="grpo", payload={}, output_dir=str(tmp_path), final_dir=str(tmp_path),
                          checkpoint_uri=str(tmp_path), checkpoint_every=10, keep_checkpoints=2)
    assert GRPOConfig(output_dir=str(tmp_path), use_cpu=True).use_bias_correction_kl is True  # TRL's default
    for setting in (False, True):
        cfg = parse_section(GRPOStageConfig, {"bf16": False, "kl_importance_correction": setting}, "grpo")
        args = GRPOConfig(**grpo_arguments(cfg, job, 256, use_vllm=False, vllm_server_url=None,
                                           rewards=RewardSetup(funcs=[], weights=[1.0, 0.1])))
        assert args.use_bias_correction_kl is setting
    assert GRPOStageConfig().kl_importance_correction is False


# ----------------------------------------------------------------------------------------------
# Checkpoints in object storage
# ----------------------------------------------------------------------------------------------


def fake_checkpoint(root: Path, step: int, best: int | None) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes([step % 256]) * 64)
    (folder / "optimizer.pt").write_bytes(b"adam" * step)
    state = {"global_step": step, "best_global_step": best, "best_model_checkpoint": f"/elsewhere/checkpoint-{best}"}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def test_checkpoints_publish_prune_and_restore(tmp_path, remote):
    local = tmp_path / "run"
    for step in (5, 10, 15, 20):
        checkpoints.publish(fake_checkpoint(local, step, best=5), remote, step, keep=2, best_step=5)
    assert checkpoints.complete(remote) == [5, 15, 20]  # the 2 newest + the best
    restored_dir = tmp_path / "restored"
    resume = checkpoints.restore(remote, restored_dir)
    assert resume == restored_dir / "checkpoint-20"
    assert sorted(p.name for p in restored_dir.iterdir()) == ["checkpoint-20", "checkpoint-5"]
    assert (resume / "optimizer.pt").read_bytes() == b"adam" * 20
    state = json.loads((resume / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(restored_dir / "checkpoint-5")
    checkpoints.drop_all(remote)
    assert checkpoints.complete(remote) == [] and storage.list_files(remote) == []


def test_incomplete_checkpoints_are_ignored(tmp_path):
    remote = tmp_path / "remote"
    checkpoints.publish(fake_checkpoint(tmp_path / "run", 5, None), str(remote), 5, keep=2, best_step=None)
    partial = fake_checkpoint(remote, 10, None)  # written in place by something else: no manifest
    (remote / ".checkpoint-15.tmp-1234").mkdir()  # an interrupted publish
    assert partial.is_dir() and checkpoints.complete(str(remote)) == [5]
    assert checkpoints.restore(str(remote), tmp_path / "r").name == "checkpoint-5"
    assert checkpoints.restore(str(tmp_path / "empty"), tmp_path / "r2") is None


def test_checkpoints_of_another_job_are_refused(tmp_path):
    uri = str(tmp_path / "ckpt")
    checkpoints.claim(uri, "aaa", "grpo")
    checkpoints.claim(uri, "aaa", "grpo")
    with pytest.raises(ConfigError, match="grpo.checkpoint.uri: .* holds checkpoints of another job"):
        checkpoints.claim(uri, "bbb", "grpo")


def test_checkpoint_location_and_fingerprint():
    settings = TrainerSettings()

    def fingerprint(section=settings, inputs=(("corpus", "sha256:1"),), seed=42, code="abc", kernels="native"):
        return checkpoints.job_fingerprint(section, dict(inputs), seed=seed, code=code, cpu_kernels=kernels)

    base = fingerprint()
    assert checkpoints.checkpoint_uri(settings, "gs://b/cache", "grpo", base) == f"gs://b/cache/checkpoints/grpo/{base[:16]}"
    configured = TrainerSettings(checkpoint={"uri": "gs://b/ckpt"})
    assert checkpoints.checkpoint_uri(configured, "gs://b/cache", "grpo", base) == "gs://b/ckpt"
    assert base == fingerprint(section=TrainerSettings())
    assert base != fingerprint(inputs=(("corpus", "sha256:2"),))
    assert base != fingerprint(section=TrainerSettings(learning_rate=1e-4))
    assert base != fingerprint(seed=7)
    assert base != fingerprint(code="def")
    assert base != fingerprint(kernels="reproducible")  # never resumes another numerics' checkpoint


def test_the_cache_keeps_the_latest_jobs_of_a_stage(tmp_path):
    root = tmp_path / "checkpoints" / "grpo"
    for k, name in enumerate(["job-a", "job-b", "job-c", "job-d"]):
        uri = str(root / name)
        checkpoints.claim(uri, name, "grpo")
        checkpoints.publish(fake_checkpoint(tmp_path / "local" / name, 5, None), uri, 5, keep=2, best_step=None)
        final = tmp_path / "final" / name
        final.mkdir(parents=True)
        (final / "config.json").write_text("{}")
        checkpoints.publish_final(final, uri)
    checkpoints.claim(str(root / "job-a"), "job-a", "grpo")  # job-a ran again: it is the newest now
    assert sorted(checkpoints.prune_jobs(str(root), keep=2)) == [str(root / "job-b"), str(root / "job-c")]
    assert sorted(p.name for p in root.iterdir()) == ["job-a", "job-d"]
    assert checkpoints.fetch_final(str(root / "job-a"), tmp_path / "reused")


def test_final_model_is_reused_only_when_complete(tmp_path):
    uri = str(tmp_path / "ckpt")
    assert not checkpoints.fetch_final(uri, tmp_path / "a")
    final = tmp_path / "final"
    final.mkdir()
    (final / "config.json").write_text("{}")
    checkpoints.publish_final(final, uri)
    assert checkpoints.fetch_final(uri, tmp_path / "b") and (tmp_path / "b" / "config.json").is_file()


def test_training_throughput_counts_the_tokens_of_this_run():
    """tokens/s of the stage's run record: tokens since the resumed checkpoint over train_runtime,
    from SFTTrainer's or GRPOTrainer's cumulative token counts."""
    sft = {"log_history": [{"step": 10, "num_input_tokens_seen": 1000, "num_tokens": 10},
                           {"step": 20, "num_input_tokens_seen": 2000, "num_tokens": 20},
                           {"step": 20, "train_runtime": 4.0}]}  # TRL's SFT num_tokens restarts on resume
    assert launch.training_tokens_per_s(sft) == 500.0
    resumed = {"resumed_from_step": 10, **sft}
    assert launch.training_tokens_per_s(resumed) == 250.0
    grpo = {"log_history": [{"step": 1, "num_tokens": 300.0}, {"step": 2, "num_tokens": 600.0},
                            {"step": 2, "train_runtime": 3.0}]}
    assert launch.training_tokens_per_s(grpo) == 200.0
    assert launch.training_tokens_per_s({"log_history": [{"step": 1, "train_runtime": 1.0}]}) is None
