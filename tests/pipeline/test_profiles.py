"""The run profiles of ``pipeline/configs``: each one is cluster-ready where it should be and
compiles to IR in which every task names its own image, its resources and its platform settings;
the three paper-scale GPU profiles are the recipe, match the cluster facts of ``manifests/``, and
differ only in their dataset. (tests/common/test_config.py loads and validates every profile.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from components.common.config import load_yaml
from components.ingest.config import IngestConfig
from pipeline import cli
from pipeline.config import CONFIG_DIR, STAGES, RunConfig, load_config

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
#: Paper scale on a GKE cluster: dataset -> (profile, Amazon 2018 category file stem).
GPU_PROFILES = {"games": ("games-qwen3-1.7b", "Video_Games"),
                "office": ("office-qwen3-1.7b", "Office_Products"),
                "industrial": ("industrial-qwen3-1.7b", "Industrial_and_Scientific")}
#: CPU profiles of this machine (local data, local MLflow store).
LOCAL_PROFILES = ("demo", "office-tiny")
#: The GPU smoke run: one GPU per GPU stage, no download (README "GPU").
SMOKE_PROFILE = "smoke-gpu"
SMOKE_GPU_STAGES = ("sid_quantize", "align_sft", "reason_sft", "grpo", "evaluate")
#: The only settings in which the GPU profiles may differ: what names the dataset.
DATASET_KEYS = {"run.name", "ingest.files.reviews", "ingest.files.meta", "tracking.experiment",
                "retrain.registered_model"}
GPU_STAGES = {"sid_quantize": 1, "align_sft": 4, "reason_sft": 4, "grpo": 4, "evaluate": 2, "recommend": 2}
TRAINING_STAGES = ("align_sft", "reason_sft", "grpo")
REGISTRY, TAG = "registry.test/team/sidreasoner", "0a1b2c3"


def gpu_profile_names() -> list[str]:
    return [profile for profile, _ in GPU_PROFILES.values()]


def task_name(stage: str) -> str:
    return stage.replace("_", "-")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


@pytest.fixture(scope="module")
def cluster_facts() -> dict[str, Any]:
    """manifests/base/cluster-facts.yaml: the GPU node label, pools, taint and /dev/shm size."""
    data = yaml.safe_load((REPO / "manifests" / "base" / "cluster-facts.yaml").read_text())["data"]
    taint, effect = data["gpu-taint"].split(":")
    key, value = taint.split("=")
    return {"label": data["gpu-node-label-key"], "pools": set(data["gpu-node-pools"].split()),
            "taint": {"key": key, "value": value, "effect": effect}, "shm": data["dshm-size"],
            "driver": data["gpu-driver-min-version"], "cuda": data["gpu-image-cuda-version"]}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[RunConfig, dict, dict]]:
    """Every profile compiled once through the CLI: profile -> (config, IR spec, platform spec)."""
    out = {}
    for profile in PROFILES:
        path = tmp_path_factory.mktemp("ir") / f"{profile}.yaml"
        assert cli.main(["compile", "--config", profile, "--registry", REGISTRY, "--tag", TAG,
                         "--out", str(path)]) == 0
        spec, platform = yaml.safe_load_all(path.read_text())
        out[profile] = (load_config(profile)[0], spec, platform)
    return out


def test_every_profile_is_either_a_cpu_or_a_gpu_profile():
    assert sorted(PROFILES) == sorted([*LOCAL_PROFILES, *gpu_profile_names(), SMOKE_PROFILE])


@pytest.mark.parametrize("profile", gpu_profile_names())
def test_gpu_profiles_are_cluster_ready(profile):
    cfg, _ = load_config(profile)
    assert cfg.cluster_problems() == []
    assert cfg.requested_gpus() == {stage: GPU_STAGES.get(stage, 0) for stage in STAGES}
    cfg.check_hardware(cfg.requested_gpus())  # bf16, processes and shards fit the GPUs they ask for


@pytest.mark.parametrize("profile", LOCAL_PROFILES)
def test_cpu_profiles_run_here_and_not_on_a_cluster(profile):
    cfg, _ = load_config(profile)
    cfg.check_hardware({stage: 0 for stage in STAGES})  # no GPU needed
    assert cfg.teacher_corpus.teacher.backend == "offline"  # no API key needed
    problems = "\n".join(cfg.cluster_problems())
    assert "tracking.uri" in problems and "ingest.source" in problems


@pytest.mark.parametrize("profile", PROFILES)
def test_compiled_tasks_carry_their_image_resources_and_platform(compiled, profile):
    cfg, spec, platform = compiled[profile]
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {task_name(stage) for stage in cfg.dag_stages()}
    for stage in cfg.dag_stages():
        resources = getattr(cfg.resources, stage)
        container = executors[f"exec-{task_name(stage)}"]["container"]
        assert container["image"] == f"{REGISTRY}/{task_name(stage)}:{TAG}"
        assert container["resources"]["resourceCpuRequest"] == resources.cpu_request
        assert container["resources"]["resourceMemoryRequest"] == resources.memory_request
        accelerator = container["resources"].get("accelerator")
        if resources.gpus:
            assert accelerator == {"count": str(resources.gpus), "resourceCount": str(resources.gpus),
                                   "type": "nvidia.com/gpu", "resourceType": "nvidia.com/gpu"}
        else:
            assert accelerator is None
        assert tasks[task_name(stage)]["retryPolicy"]["maxRetryCount"] == resources.retries
        settings = k8s[f"exec-{task_name(stage)}"]
        assert settings["podMetadata"]["labels"]["sidreasoner/stage"] == stage
        assert settings.get("nodeSelector", {}).get("labels", {}) == resources.node_selector
        assert settings.get("tolerations", []) == [t.model_dump(exclude_none=True) for t in resources.tolerations]
        shm = [m for m in settings.get("emptyDirMounts", []) if m["mountPath"] == "/dev/shm"]
        assert shm == ([{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory",
                         "sizeLimit": resources.shm_size}] if resources.shm_size else [])
        secrets = [s["secretName"] for s in settings.get("secretAsEnv", [])]
        expected = [s.secret_name for s in cfg.kubernetes.secrets if stage in s.stages]
        assert secrets == expected


@pytest.mark.parametrize("profile", gpu_profile_names())
def test_gpu_profiles_schedule_gpu_work_on_the_clusters_gpu_pools(compiled, cluster_facts, profile):
    cfg, _, platform = compiled[profile]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for stage in cfg.dag_stages():
        settings = k8s[f"exec-{task_name(stage)}"]
        selector = settings.get("nodeSelector", {}).get("labels", {})
        if stage in GPU_STAGES:
            assert set(selector) == {cluster_facts["label"]} and selector[cluster_facts["label"]] in cluster_facts["pools"]
            assert {"operator": "Equal", **cluster_facts["taint"]} in settings["tolerations"]
            assert settings["emptyDirMounts"][0]["sizeLimit"] == cluster_facts["shm"]
        else:  # CPU work stays off the GPU pools
            assert selector == {} and "tolerations" not in settings and "emptyDirMounts" not in settings
    for stage in TRAINING_STAGES:  # one training node type: processes and memory behave the same
        assert getattr(cfg.resources, stage) == cfg.resources.align_sft


@pytest.mark.parametrize("profile", gpu_profile_names())
def test_the_teacher_key_reaches_only_the_corpus_stage_and_never_the_ir(compiled, profile, monkeypatch, tmp_path):
    cfg, spec, platform = compiled[profile]
    key_env = cfg.teacher_corpus.teacher.api_key_env
    (secret,) = cfg.kubernetes.secrets
    assert secret.stages == ["teacher_corpus"] and key_env in secret.env
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert [stage for stage in cfg.dag_stages() if "secretAsEnv" in k8s[f"exec-{task_name(stage)}"]] == \
        ["teacher_corpus"]
    (mapping,) = k8s["exec-teacher-corpus"]["secretAsEnv"]
    assert mapping["keyToEnv"] == [{"secretKey": secret.env[key_env], "envVar": key_env}]
    # compiling with the key in the environment leaves no trace of it
    monkeypatch.setenv(key_env, "sk-test-must-not-reach-the-ir")
    out = tmp_path / "ir.yaml"
    assert cli.main(["compile", "--config", profile, "--out", str(out)]) == 0
    assert "sk-test-must-not-reach-the-ir" not in out.read_text()


def test_gpu_profiles_differ_only_in_their_dataset():
    flat = {dataset: flatten(load_yaml(CONFIG_DIR / f"{profile}.yaml"))
            for dataset, (profile, _) in GPU_PROFILES.items()}
    keys = set().union(*(set(values) for values in flat.values()))
    differing = {key for key in keys if len({repr(values.get(key)) for values in flat.values()}) > 1}
    assert differing == DATASET_KEYS
    for dataset, (profile, category) in GPU_PROFILES.items():
        values = flat[dataset]
        assert values["run.name"] == values["tracking.experiment"] == values["retrain.registered_model"] == \
            f"sidreasoner-{dataset}"
        assert (values["ingest.files.reviews"], values["ingest.files.meta"]) == \
            (f"{category}.json.gz", f"meta_{category}.json.gz")


@pytest.mark.parametrize("profile", gpu_profile_names())
def test_gpu_profiles_are_the_recipe(profile):
    """RECIPE.md's settings outside the training sections (tests/training/test_configs.py checks
    those): raw Amazon 2018 with the paper's preprocessing, a 4B encoder on a GPU and a 3 x 256
    RQ-VAE, a litellm teacher, Qwen3-1.7B, beam 10 over 2 GPU shards, MiniOneRec's SASRec."""
    cfg, _ = load_config(profile)
    assert cfg.ingest.format == "amazon18" and not cfg.ingest.resplit
    assert cfg.ingest.preprocess == IngestConfig(format="amazon18", source="x").preprocess  # the defaults
    sid = cfg.sid_quantize
    assert (sid.method, sid.codebook_sizes, sid.rq_vae.code_dim, sid.rq_vae.epochs) == ("rq_vae", [256] * 3, 32, 10000)
    assert sid.encoder.model.startswith("gs://") and "Qwen3-Embedding-4B" in sid.encoder.model
    assert (sid.encoder.max_length, sid.encoder.device, sid.encoder.dtype) == (2048, "cuda", "bfloat16")
    teacher = cfg.teacher_corpus.teacher
    assert (teacher.backend, teacher.model) == ("litellm", "openai/gpt-4o-mini")
    assert cfg.align_sft.backbone.uri.startswith("gs://") and cfg.align_sft.backbone.uri.endswith("/Qwen3-1.7B")
    ev = cfg.evaluate
    assert (ev.beam_width, ev.shards, ev.engine, ev.max_reasoning_tokens, ev.max_examples) == (10, 2, "vllm", 1024, None)
    assert set(ev.modes) == {"thinking", "direct"} and cfg.baselines.models == ["popularity", "sasrec", "sasrec_ce"]
    sasrec = cfg.baselines.sasrec
    assert (sasrec.hidden_size, sasrec.dropout, sasrec.learning_rate) == (32, 0.3, 1e-3)
    assert cfg.tracking.uri == "http://mlflow.sidreasoner.svc.cluster.local:5000"
    assert cfg.storage.pipeline_root.startswith("gs://") and cfg.storage.cache_uri.startswith("gs://")


@pytest.mark.parametrize("profile", gpu_profile_names())
def test_gpu_profiles_retrain_on_schedule_through_the_registry(compiled, profile):
    """A scheduled run finds the production model in MLflow, keeps its SIDs, warm-starts from it,
    promotes only a better model and recommends with it; office-tiny starts fresh every run."""
    cfg, spec, _ = compiled[profile]
    assert cfg.retrain.enabled and cfg.retrain.incremental_sids and cfg.retrain.warm_start
    assert (cfg.retrain.mode, cfg.retrain.split) in {(m, s) for m in cfg.evaluate.modes for s in cfg.evaluate.splits}
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {task_name(stage) for stage in STAGES}
    assert "previous-model" in tasks["align-sft"]["dependentTasks"]  # warm start
    assert "previous-model" in tasks["evaluate"]["dependentTasks"]  # production scored on the same rows
    assert "evaluate" in tasks["promote"]["dependentTasks"]
    assert "promote" in tasks["recommend"]["dependentTasks"]  # recommendations by the model just promoted
    # office-tiny starts fresh every run; the demo retrains through its local store's registry
    assert not load_config("office-tiny")[0].retrain.enabled
    demo = load_config("demo")[0]
    assert demo.retrain.enabled and demo.recommend.enabled and demo.tracking.uri.startswith("sqlite:///")


def test_office_tiny_reads_the_shared_pack_by_default_or_another_copy():
    cfg, _ = load_config("office-tiny")
    assert (cfg.ingest.format, cfg.ingest.source, cfg.ingest.resplit) == \
        ("release", "../shared/data/amazon18-office", True)
    assert load_config("office-tiny", ["ingest.source=gs://bucket/office"])[0].ingest.source == "gs://bucket/office"
    assert cfg.teacher_corpus.teacher.backend == "offline" and cfg.align_sft.backbone.tiny is not None
    assert cfg.baselines.models == ["popularity", "sasrec", "sasrec_ce"]
    assert (cfg.baselines.sasrec.hidden_size, cfg.baselines.sasrec.dropout, cfg.baselines.sasrec.learning_rate) == \
        (32, 0.3, 1e-3)


def test_office_tiny_ingests_the_shared_pack(office_pack, tmp_path):
    """The pack has no train split: office-tiny's ingest redoes the chronological 8:1:1 split over
    valid + test, and the SID codebooks hold the catalog."""
    from components.ingest.preprocess import preprocess
    from components.ingest.readers import read_catalog

    cfg, _ = load_config("office-tiny", [f"ingest.source={office_pack}"])
    items, samples, stats = preprocess(read_catalog(cfg.ingest), cfg.ingest.preprocess, resplit=cfg.ingest.resplit)
    assert len(items) == 3459 and stats["samples"]["total"] == 9732
    counts = samples["split"].value_counts().to_dict()
    assert counts == {"train": 7785, "valid": 973, "test": 974}
    spans = samples.groupby("split")["timestamp"].agg(["min", "max"])
    assert spans.loc["train", "max"] < spans.loc["valid", "min"] and spans.loc["valid", "max"] < spans.loc["test", "min"]
    # the last 974 rows of the pack's test split (rows are in time order)
    assert (samples.loc[samples["split"] == "test", "timestamp"] >= 9732 - 974).all()
    assert cfg.sid_quantize.capacity >= 4 * len(items)
    assert cfg.evaluate.max_examples is None  # the whole test split


# ----------------------------------------------------------------------------------------------
# The GPU node requirement and the GPU smoke profile
# ----------------------------------------------------------------------------------------------


def test_the_driver_requirement_is_the_images_cuda(cluster_facts):
    """manifests/ states the driver the GPU images need; the stages check the same floor, and
    the CUDA lock's user-space libraries are the CUDA it is the floor of."""
    from components.common import hardware

    assert int(cluster_facts["driver"]) == hardware.MIN_DRIVER_MAJOR
    assert int(cluster_facts["cuda"]) == hardware.IMAGE_CUDA_MAJOR
    lock = (REPO / "requirements" / "image-cuda.lock.txt").read_text()
    runtime = next(line for line in lock.splitlines() if line.startswith("nvidia-cuda-runtime=="))
    assert runtime.split("==")[1].split(".")[0] == str(hardware.IMAGE_CUDA_MAJOR)
    readme = (REPO / "README.md").read_text()
    assert f"driver >= {hardware.MIN_DRIVER_MAJOR}" in readme


def test_smoke_gpu_asks_one_gpu_per_gpu_task(compiled, cluster_facts):
    """``sidreasoner compile --config smoke-gpu``: one GPU for every GPU stage, on the clusters'
    GPU pools; CPU stages stay off them."""
    cfg, spec, platform = compiled[SMOKE_PROFILE]
    assert cfg.requested_gpus() == {stage: int(stage in SMOKE_GPU_STAGES) for stage in STAGES}
    cfg.check_hardware(cfg.requested_gpus())
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for stage in cfg.dag_stages():
        resources = executors[f"exec-{task_name(stage)}"]["container"]["resources"]
        selector = k8s[f"exec-{task_name(stage)}"].get("nodeSelector", {}).get("labels", {})
        if stage in SMOKE_GPU_STAGES:
            assert resources["accelerator"]["count"] == "1"
            assert selector[cluster_facts["label"]] in cluster_facts["pools"]
            assert k8s[f"exec-{task_name(stage)}"]["emptyDirMounts"][0]["sizeLimit"] == cluster_facts["shm"]
        else:
            assert "accelerator" not in resources and selector == {}
    # on a cluster only the run's own locations change: data, stores
    ready, _ = load_config(SMOKE_PROFILE, ["ingest.source=gs://b/demo-data", "storage.cache_uri=gs://b/cache",
                                           "storage.pipeline_root=gs://b/root", "tracking.uri=http://mlflow:5000"])
    assert ready.cluster_problems() == []


def test_smoke_gpu_runs_every_gpu_path_of_the_paper_profiles():
    """What the paper profiles run on GPUs, the smoke profile runs too, at a size done in minutes:
    ZeRO-2 launches with bf16 and gradient checkpointing, colocated vLLM GRPO rollouts, vLLM
    thinking-mode evaluation with the trie processor; Qwen3-1.7B's architecture, no download."""
    smoke, _ = load_config(SMOKE_PROFILE)
    paper, _ = load_config(GPU_PROFILES["office"][0])
    for stage in TRAINING_STAGES:
        mine, theirs = getattr(smoke, stage), getattr(paper, stage)
        assert (mine.launch.strategy, mine.bf16, mine.gradient_checkpointing) == \
            (theirs.launch.strategy, theirs.bf16, theirs.gradient_checkpointing) == ("zero2", True, True)
        assert mine.max_steps is not None and mine.max_steps <= 60
    for section in ("grpo",):
        mine, theirs = getattr(smoke, section).rollout, getattr(paper, section).rollout
        assert (mine.engine, mine.vllm_mode, mine.vllm_gpu_memory_utilization) == \
            (theirs.engine, theirs.vllm_mode, theirs.vllm_gpu_memory_utilization)
    assert smoke.grpo.reward.mode == paper.grpo.reward.mode == "prefix"  # make smoke-gpu adds beam_rank
    assert smoke.grpo.beta > 0  # the reference model too
    ev = smoke.evaluate
    assert (ev.engine, ev.device, ev.dtype) == (paper.evaluate.engine, paper.evaluate.device, paper.evaluate.dtype)
    assert "thinking" in ev.modes and ev.max_examples is not None
    backbone = smoke.align_sft.backbone
    assert backbone.uri is None and backbone.from_config.architecture == "qwen3-1.7b"
    assert backbone.from_config.head_dim is None  # Qwen3's 128
    assert smoke.sid_quantize.encoder.model.startswith("builtin:") and smoke.teacher_corpus.teacher.backend == "offline"
    assert smoke.sid_quantize.device == smoke.sid_quantize.encoder.device == "cuda"
