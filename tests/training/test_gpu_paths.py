"""The GPU-only mechanisms of the training library, run on a CPU wherever they can run there
(issue 11): a single DeepSpeed process started through the real ``accelerate launch``, fp32 master
weights under ``bf16: true``, HF rollout generation in bounded chunks, and the NVIDIA driver
check of a GPU stage on faked node readings."""

from __future__ import annotations

import ctypes
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from components.align_sft import STAGE as ALIGN
from components.common import artifacts, hardware, modeling, prompts
from components.common.config import parse_section
from components.common.training import launch, sft
from components.common.training.settings import LaunchConfig, SFTSettings
from tests.tiny_sid_model import build_sid_model
from tests.training.conftest import CPU, context, weights

DEEPSPEED_CPU = Path(__file__).parent / "deepspeed_cpu"

# ----------------------------------------------------------------------------------------------
# One GPU with ZeRO-2/3: the rendezvous accelerate leaves to DeepSpeed
# ----------------------------------------------------------------------------------------------


def sft_job(tmp: Path, base: Path, deepspeed: str | None, use_cpu: bool, **settings) -> launch.TrainJob:
    """A two-step SFT job of the real engine on ``base`` (a few chat rows)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = [(["<a_0><b_0><c_0>"], "<a_0><b_0><c_1>")] * 8
    sft.encode_direct(tokenizer, rows, supervise_end=True, max_length=128).dataset().save_to_disk(str(tmp / "train"))
    cfg = SFTSettings(**{**CPU, "max_steps": 2, "global_batch_size": 4, "per_device_batch_size": 4,
                         "eval_strategy": "no", "early_stopping_patience": None, **settings})
    payload = sft.SFTPayload(settings=cfg, base_model=str(base), train_data=str(tmp / "train"),
                             gradient_accumulation_steps=1, sid_vocab=[],
                             record=artifacts.ModelRecord(sid_space=None, sid_map_digest=None, stage="align_sft"))
    return launch.TrainJob(entry=sft.ENTRY, stage="align_sft", payload=payload.model_dump(mode="json"),
                           output_dir=str(tmp / "checkpoints"), final_dir=str(tmp / "final"),
                           checkpoint_uri=str(tmp / "remote"), checkpoint_every=100, keep_checkpoints=1,
                           world_size=1, use_cpu=use_cpu, deepspeed=deepspeed)


def test_only_a_single_deepspeed_process_gets_rendezvous_variables(tmp_path):
    port = LaunchConfig(main_process_port=29611)
    zero2 = str(launch.DEEPSPEED_CONFIGS["zero2"])
    job = launch.TrainJob(entry="m:f", stage="s", payload={}, output_dir="o", final_dir="f", checkpoint_uri="c",
                          checkpoint_every=1, keep_checkpoints=1, world_size=1, use_cpu=False, deepspeed=zero2)
    assert launch.rendezvous_env(job, port) == {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                                                "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                                                "MASTER_PORT": "29611"}
    # several processes: torchrun (accelerate's multi-GPU launcher) sets them; one DDP process needs none
    assert launch.rendezvous_env(job.model_copy(update={"world_size": 4}), port) == {}
    assert launch.rendezvous_env(job.model_copy(update={"deepspeed": None}), port) == {}


@pytest.fixture
def deepspeed_on_cpu(monkeypatch):
    """Launched processes that bring DeepSpeed up without compiling its CPU-only shared-memory
    kernel (deepspeed_cpu/sitecustomize.py says why)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(DEEPSPEED_CPU), os.environ.get("PYTHONPATH")])))


def test_one_deepspeed_process_trains_through_accelerate_launch(tmp_path, tiny_backbone, deepspeed_on_cpu):
    """The real launch path of one GPU with ZeRO-2 (``accelerate launch``, one process, the
    Trainer initialising DeepSpeed), on this CPU: the DeepSpeed process group comes up from the
    rendezvous variables and the SFT engine trains its two steps."""
    job = sft_job(tmp_path, tiny_backbone, str(launch.DEEPSPEED_CONFIGS["zero2"]), use_cpu=False)
    result = launch.run_job(job, tmp_path / "job.json", LaunchConfig(main_process_port=29612), bf16=False)
    assert result["global_step"] == 2
    assert (Path(job.final_dir) / "model.safetensors").is_file()


def test_without_rendezvous_variables_deepspeed_looks_for_mpi(tmp_path, tiny_backbone, monkeypatch, capfd,
                                                              deepspeed_on_cpu):
    """What the variables fix: one process under ``accelerate launch`` has none, DeepSpeed falls
    back to MPI discovery and needs mpi4py, which the images do not install."""
    monkeypatch.setattr(launch, "rendezvous_env", lambda job, settings: {})
    job = sft_job(tmp_path, tiny_backbone, str(launch.DEEPSPEED_CONFIGS["zero2"]), use_cpu=False)
    with pytest.raises(RuntimeError, match="training processes failed"):
        launch.run_job(job, tmp_path / "job.json", LaunchConfig(main_process_port=29613), bf16=False)
    assert "No module named 'mpi4py'" in capfd.readouterr().err


# ----------------------------------------------------------------------------------------------
# bf16: mixed precision with fp32 master weights
# ----------------------------------------------------------------------------------------------


def test_bf16_training_keeps_fp32_master_weights(tmp_path, tiny_backbone):
    """A bf16 checkpoint (as Qwen3's) trained with ``bf16: true`` at the GRPO recipe's learning
    rate: the engine trains fp32 weights under bf16 autocast, so one AdamW step moves every
    tensor. Trained as pure bf16 weights, a step of ~5e-7 rounds to nothing on most of them
    (bf16 resolves ~8e-5 at a weight of 0.02, ~8e-3 at a norm weight of 1)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "bf16-base"
    AutoModelForCausalLM.from_pretrained(tiny_backbone, dtype=torch.bfloat16).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_backbone).save_pretrained(base)
    assert {t.dtype for t in weights(base).values()} == {torch.bfloat16}
    from components.common.training.engine import load_trained_model

    assert {p.dtype for p in load_trained_model(base).parameters()} == {torch.float32}

    job = sft_job(tmp_path, base, None, use_cpu=True, bf16=True, max_steps=1, learning_rate=5e-7,
                  lr_scheduler_type="constant")
    launch.run_job(job, tmp_path / "job.json", LaunchConfig(), bf16=True)
    before, after = weights(base), weights(job.final_dir)
    assert {t.dtype for t in after.values()} == {torch.float32}  # the master weights the optimizer updated
    unmoved = [name for name, old in before.items() if torch.equal(old.float(), after[name])]
    assert unmoved == []
    # the same step applied to bf16 weights: almost every weight rounds back to where it was
    moved = sum(int((after[name] != old.float()).sum()) for name, old in before.items())
    kept_in_bf16 = sum(int(((after[name] != old.float()) & (after[name].to(torch.bfloat16) == old)).sum())
                       for name, old in before.items())
    assert kept_in_bf16 > 0.9 * moved


# ----------------------------------------------------------------------------------------------
# HF rollouts in bounded generate calls
# ----------------------------------------------------------------------------------------------

CODEBOOKS = (2, 3, 4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_sid_model(tmp_path_factory.mktemp("gen") / "model", CODEBOOKS, seed=3)
    model, tokenizer = modeling.load_causal_lm(folder)
    return SimpleNamespace(folder=folder, model=model, tokenizer=tokenizer)


def prompt_ids(tokenizer, n: int) -> list[list[int]]:
    """``n`` reasoning prompts of different lengths (so chunks pad differently)."""
    histories = [["<a_0><b_0><c_0>", "<a_1><b_2><c_3>", "<a_0><b_1><c_2>"][: 1 + i % 3] for i in range(n)]
    texts = [prompts.render_prompt(tokenizer, prompts.reasoning_messages(h)) for h in histories]
    return tokenizer(text=texts)["input_ids"]


class GenerateSpy:
    """Records how many sequences each ``generate`` call of a model generates (prompts x
    num_return_sequences)."""

    def __init__(self, model, monkeypatch):
        self.sizes: list[int] = []
        original = model.generate

        def generate(*args, **kwargs):
            config = kwargs.get("generation_config")
            self.sizes.append(kwargs["input_ids"].shape[0] * (config.num_return_sequences or 1 if config else 1))
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "generate", generate)


def grpo_trainer(tiny, tmp_path, hf_generation_batch_size: int):
    from datasets import Dataset
    from trl import GRPOConfig

    from components.common.training.hf_generation import BoundedGenerationGRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path / f"out-{hf_generation_batch_size}"), use_cpu=True, bf16=False,
                      report_to=[], per_device_train_batch_size=4, num_generations=2, max_completion_length=6,
                      max_steps=1, disable_tqdm=True)
    return BoundedGenerationGRPOTrainer(
        model=tiny.model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}), processing_class=tiny.tokenizer,
        hf_generation_batch_size=hf_generation_batch_size)


def test_trl_free_sampling_generates_in_bounded_chunks_with_the_same_results(tiny, tmp_path, monkeypatch):
    """TRL's own HF path (``rollout.engine: hf``, prefix reward) through the trainer the engine
    builds: 10 sequences, at most 3 per ``generate``; greedy decoding gives the very sequences
    one call gives."""
    ids = prompt_ids(tiny.tokenizer, 10)
    results = {}
    for size in (3, 100):
        trainer = grpo_trainer(tiny, tmp_path, size)
        trainer.generation_config.do_sample = False
        spy = GenerateSpy(tiny.model, monkeypatch)
        completions, logprobs = trainer._generate_single_turn(ids, None, {}, num_generations=2)
        results[size] = (completions, spy.sizes)
        assert logprobs is None and len(completions) == 10
        monkeypatch.undo()
    assert results[3][1] == [3, 3, 3, 1] and results[100][1] == [10]
    assert results[3][0] == results[100][0]
    assert any(len(c) > 0 for c in results[3][0])


def test_beam_rollout_reasoning_is_sampled_in_bounded_chunks(tiny, monkeypatch):
    """The beam rollout's HF engine: n continuations per prompt, at most ``generation_rows``
    sequences per ``generate`` (never less than one prompt's n); greedy results as one call's."""
    import contextlib

    from transformers import GenerationConfig

    from components.common.constrained import SidTrie
    from components.grpo.beam import HfEngine

    trie = SidTrie.from_tokenizer(tiny.tokenizer, ["<a_0><b_0><c_0>", "<a_1><b_2><c_3>"])
    ids = prompt_ids(tiny.tokenizer, 5)
    stops = [tiny.tokenizer.eos_token_id]

    def engine(rows: int, **generation) -> HfEngine:
        config = GenerationConfig(pad_token_id=tiny.tokenizer.pad_token_id, **generation)
        return HfEngine(lambda: contextlib.nullcontext(tiny.model), config, trie, tiny.tokenizer.pad_token_id,
                        beam_rows=8, generation_rows=rows)

    outputs, sizes = {}, {}
    for rows in (2, 64):
        spy = GenerateSpy(tiny.model, monkeypatch)
        hf = engine(rows, do_sample=False)
        with hf.session():
            outputs[rows] = hf.sample(ids, 1, 6, stops)
        sizes[rows] = spy.sizes
        monkeypatch.undo()
    assert sizes == {2: [2, 2, 1], 64: [5]} and outputs[2] == outputs[64]
    spy = GenerateSpy(tiny.model, monkeypatch)
    sampled = engine(5, do_sample=True, top_k=0)
    with sampled.session():
        groups = sampled.sample(ids, 4, 6, stops)  # 4 per prompt: one prompt (4 rows) per call
    assert spy.sizes == [4] * 5 and [len(g) for g in groups] == [4] * 5


# ----------------------------------------------------------------------------------------------
# The NVIDIA driver of a GPU node
# ----------------------------------------------------------------------------------------------


class FakeNvmlLibrary:
    """The NVML C functions :class:`hardware.Nvml` calls, answering from fixed readings (ctypes
    arguments as the real library receives them). Each memory query of a GPU reads the next
    value of its ``used_mib`` series (the last one repeats)."""

    def __init__(self, driver: str, cuda: int, gpus: list[tuple[str, int]], used_mib: list[list[int]]):
        self.driver, self.cuda, self.gpus = driver, cuda, gpus
        self.used = [iter(readings) for readings in used_mib]
        self.last = [readings[0] for readings in used_mib]
        self.initialised = False

    def nvmlInit_v2(self):
        self.initialised = True
        return 0

    def nvmlShutdown(self):
        self.initialised = False
        return 0

    def nvmlSystemGetDriverVersion(self, buffer, size):
        buffer.value = self.driver.encode()
        return 0

    def nvmlSystemGetCudaDriverVersion_v2(self, ref):
        ref._obj.value = self.cuda
        return 0

    def nvmlDeviceGetCount_v2(self, ref):
        ref._obj.value = len(self.gpus)
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, ref):
        ref._obj.value = index.value + 1  # handles are opaque pointers; never 0
        return 0

    def nvmlDeviceGetName(self, handle, buffer, size):
        buffer.value = self.gpus[handle.value - 1][0].encode()
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle, ref):
        device = handle.value - 1
        self.last[device] = next(self.used[device], self.last[device])
        ref._obj.total = self.gpus[device][1] * 1024 * 1024
        ref._obj.used = self.last[device] * 1024 * 1024
        ref._obj.free = ref._obj.total - ref._obj.used
        return 0


def fake_nvml(driver: str = "580.65.06", cuda: int = 13000, used_mib=None):
    library = FakeNvmlLibrary(driver, cuda, [("NVIDIA H100 80GB HBM3", 81559)] * 2,
                              used_mib or [[500, 500, 30000, 70000, 1000], [400, 400, 20000, 1000]])
    return lambda: hardware.Nvml(library)


def test_an_old_driver_is_named_with_the_one_needed():
    old = hardware.node_gpus(nvml=fake_nvml("570.124.06", 12080), nvidia_smi=lambda: None)
    assert old == hardware.NodeGpus("570.124.06", "12.8", ("NVIDIA H100 80GB HBM3",) * 2, (81559, 81559))
    with pytest.raises(hardware.DriverError, match=r"NVIDIA driver 570.124.06, which supports CUDA up to 12.8, on "
                                                   r"this node \(2 x NVIDIA H100 80GB HBM3\) is too old: the image's "
                                                   r"CUDA 13 libraries need driver >= 580"):
        hardware.check_driver(old)
    hardware.check_driver(hardware.node_gpus(nvml=fake_nvml("580.65.06", 13000), nvidia_smi=lambda: None))
    hardware.check_driver(None)  # a CPU machine: nothing to check


def test_without_nvml_the_driver_is_read_from_nvidia_smi():
    text = "535.183.01, NVIDIA L4, 23034\n535.183.01, NVIDIA L4, 23034\n"
    found = hardware.node_gpus(nvml=lambda: None, nvidia_smi=lambda: text)
    assert found == hardware.NodeGpus("535.183.01", None, ("NVIDIA L4", "NVIDIA L4"), (23034, 23034))
    with pytest.raises(hardware.DriverError, match="NVIDIA driver 535.183.01 on this node .* need driver >= 580"):
        hardware.check_driver(found)
    assert hardware.node_gpus(nvml=lambda: None, nvidia_smi=lambda: None) is None


def test_a_gpu_stage_records_each_gpus_peak_memory():
    with hardware.gpu_stage(interval_s=0.01, nvml=fake_nvml()) as usage:
        deadline = time.monotonic() + 10
        while usage.peak_mib != [70000, 20000] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert usage.start_mib == [500, 400] and usage.peak_mib == [70000, 20000]
    assert usage.stats() == {"nvidia_driver": "580.65.06", "gpus": "2 x NVIDIA H100 80GB HBM3",
                             "gpu_peak_memory_mib": 70000, "gpu_memory_at_start_mib": 500}
    with hardware.gpu_stage(nvml=lambda: None, nvidia_smi=lambda: None) as cpu:
        pass
    assert cpu.stats() == {}


def test_a_gpu_stage_on_an_old_driver_stops_before_any_work(tmp_path, synthetic, tracking_uri, monkeypatch):
    """Through Stage.execute: the driver check comes first, naming both versions; nothing is
    written."""
    monkeypatch.setattr(hardware.Nvml, "load", staticmethod(fake_nvml("550.90.07", 12040)))
    cfg = parse_section(ALIGN.config, {**CPU, "backbone": {"tiny": {"vocab_size": 400}}}, "align_sft")
    outputs = {"model": str(tmp_path / "model"), "stats": str(tmp_path / "stats.json")}
    inputs = {k: synthetic[k] for k in ("items", "samples", "sid_map", "corpus")}
    with pytest.raises(hardware.DriverError, match="NVIDIA driver 550.90.07, which supports CUDA up to 12.4"):
        ALIGN.execute(cfg, context(tmp_path, tracking_uri), inputs, outputs)
    assert not (tmp_path / "model").exists() and not (tmp_path / "stats.json").exists()


def test_the_run_records_library_versions():
    env = hardware.environment(gpus=None)
    assert env["libraries"]["torch"] == torch.__version__ and "transformers" in env["libraries"]
    assert env["nvidia_driver"] is None and env["gpus"] == []
    assert json.loads(json.dumps(env)) == env


def test_nvml_structures_match_the_c_layout():
    """nvmlMemory_t is three unsigned long longs (total, free, used)."""
    assert ctypes.sizeof(hardware._NvmlMemory) == 24
    assert [name for name, _ in hardware._NvmlMemory._fields_] == ["total", "free", "used"]


def test_the_run_record_summarises_each_stages_gpus_memory_and_throughput(monkeypatch):
    """run.json's ``hardware``: the machine once, then per stage what its stats output's metadata
    (GPU stages) and its stats say."""
    from components.common.decoding import Decoded
    from components.evaluate.stage import _reasoning_tokens_per_s
    from pipeline import local

    monkeypatch.setattr(hardware.Nvml, "load", staticmethod(fake_nvml()))
    gpu_meta = {"gpus": "2 x NVIDIA H100 80GB HBM3", "gpu_peak_memory_mib": 70000, "gpu_memory_at_start_mib": 500,
                "nvidia_driver": "580.65.06", "digest": "sha256:x"}
    record = {"stages": {"ingest": {"stats": {"uri": "u", "metadata": {"digest": "d"}}},
                         "align_sft": {"stats": {"uri": "u", "metadata": gpu_meta}, "model": {"uri": "m", "metadata": {}}},
                         "promote": {"decision": {"uri": "u", "metadata": {}}}},
              "stats": {"ingest": {"rows": 3}, "align_sft": {"tokens_per_s": 1234.5, "stage_seconds": 60.0},
                        "promote": {"promoted": False}}}
    summary = local.hardware_summary(record)
    assert summary["nvidia_driver"] == "580.65.06" and summary["gpus"] == ["NVIDIA H100 80GB HBM3"] * 2
    assert summary["libraries"]["transformers"] == "5.17.0"
    assert summary["stages"] == {"align_sft": {"gpus": "2 x NVIDIA H100 80GB HBM3", "gpu_peak_memory_mib": 70000,
                                               "gpu_memory_at_start_mib": 500, "tokens_per_s": 1234.5,
                                               "stage_seconds": 60.0}}
    thinking = [Decoded(sids=[], scores=[], latency_s=0.5, reasoning_tokens=40),
                Decoded(sids=[], scores=[], latency_s=1.5, reasoning_tokens=60)]
    assert _reasoning_tokens_per_s({"thinking": thinking, "direct": thinking}) == 50.0
    assert _reasoning_tokens_per_s({"direct": thinking}) is None


def test_counting_gpus_checks_the_driver_first(monkeypatch):
    """Where torch would report no GPU because the driver is too old, the driver is named."""
    monkeypatch.setattr(hardware.Nvml, "load", staticmethod(fake_nvml("535.54.03", 12020)))
    with pytest.raises(hardware.DriverError, match="NVIDIA driver 535.54.03, which supports CUDA up to 12.2,"):
        launch.visible_gpus()
    monkeypatch.setattr(hardware.Nvml, "load", staticmethod(lambda: None))
    monkeypatch.setattr(hardware, "_run_nvidia_smi", lambda: None)
    assert launch.visible_gpus() == 0  # this CPU machine


# ----------------------------------------------------------------------------------------------
# make smoke-gpu's own steps
# ----------------------------------------------------------------------------------------------


def test_the_smoke_run_refuses_a_machine_without_a_cuda_gpu(monkeypatch):
    from components.common.config import ConfigError
    from pipeline import smoke

    monkeypatch.setattr(hardware.Nvml, "load", staticmethod(lambda: None))
    monkeypatch.setattr(hardware, "_run_nvidia_smi", lambda: None)
    with pytest.raises(ConfigError, match="smoke-gpu: no CUDA GPU is visible to torch"):
        smoke.preflight()
    monkeypatch.setattr(hardware.Nvml, "load", staticmethod(fake_nvml("560.35.03", 12060)))
    with pytest.raises(hardware.DriverError, match="need driver >= 580"):
        smoke.preflight()


def test_the_smoke_run_trains_grpo_again_with_the_other_reward_mode(tmp_path, synthetic, tracking_uri):
    """The second GRPO of ``make smoke-gpu`` on a finished run's artifacts (here on this CPU: HF
    rollouts): beam_rank, its stats and outputs added to the run record as ``grpo_beam_rank``."""
    import yaml

    from pipeline import smoke
    from pipeline.config import load_config

    reasoning_model = build_sid_model(tmp_path / "reason_sft", (2, 4, 2), seed=1)  # the synthetic SID space
    # the demo profile's settings, in this process, which has loaded torch: native kernels (as smoke-gpu's)
    cfg, _ = load_config("demo", ["grpo.max_steps=1", "grpo.rollout_batch_size=16", "grpo.max_prompts=8",
                                  "grpo.rollout.max_completion_length=24", f"storage.cache_uri={tmp_path / 'cache'}",
                                  "run.cpu_kernels=native"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (tmp_path / "run.json").write_text(json.dumps({
        "stages": {"ingest": {"samples": {"uri": synthetic["samples"]}},
                   "reason_sft": {"model": {"uri": str(reasoning_model)}},
                   "teacher_corpus": {"reasoning": {"uri": synthetic["reasoning"]}},
                   "sid_quantize": {"sid_map": {"uri": synthetic["sid_map"]}}},
        "stats": {}, "mlflow": {"tracking_uri": tracking_uri}}))
    record = smoke.grpo_again(tmp_path, "beam_rank")
    stats = record["stats"]["grpo_beam_rank"]
    assert stats["reward_mode"] == "beam_rank" and stats["global_step"] == 1
    assert stats["summary"]["valid_sid_rate_last"] == 1.0
    assert Path(record["stages"]["grpo_beam_rank"]["model"]["uri"]).is_dir()
    result = smoke.summary({**record, "hardware": {}}, 100.0)
    assert result["grpo_valid_sid_rate_last"] == {"grpo_beam_rank": 1.0} and result["within_budget"]


def test_child_processes_get_the_gpus_of_this_process():
    """GPU indices count the GPUs this process sees: on a machine shared through
    CUDA_VISIBLE_DEVICES, the training processes and a vLLM server stay on those GPUs."""
    assert hardware.cuda_visible_devices([0, 1], environ={}) == "0,1"
    assert hardware.cuda_visible_devices([0, 1], environ={"CUDA_VISIBLE_DEVICES": "2,3"}) == "2,3"
    assert hardware.cuda_visible_devices([1], environ={"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}) == "GPU-bb"
    with pytest.raises(ValueError, match=r"GPU indices \[1\] but CUDA_VISIBLE_DEVICES=5 shows 1 GPU"):
        hardware.cuda_visible_devices([1], environ={"CUDA_VISIBLE_DEVICES": "5"})
