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
#: The only settings in which the GPU profiles may differ: what names the dataset.
DATASET_KEYS = {"run.name", "ingest.files.reviews", "ingest.files.meta", "tracking.experiment",
                "retrain.registered_model"}
GPU_STAGES = {"sid_quantize": 1, "align_sft": 4, "reason_sft": 4, "grpo": 4, "evaluate": 2}
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
            "taint": {"key": key, "value": value, "effect": effect}, "shm": data["dshm-size"]}


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
    assert sorted(PROFILES) == sorted([*LOCAL_PROFILES, *gpu_profile_names()])


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
    """A scheduled run finds the production model in MLflow, keeps its SIDs, warm-starts from it
    and promotes only a better model; the CPU profiles start fresh every run."""
    cfg, spec, _ = compiled[profile]
    assert cfg.retrain.enabled and cfg.retrain.incremental_sids and cfg.retrain.warm_start
    assert (cfg.retrain.mode, cfg.retrain.split) in {(m, s) for m in cfg.evaluate.modes for s in cfg.evaluate.splits}
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {task_name(stage) for stage in STAGES}
    assert "previous-model" in tasks["align-sft"]["dependentTasks"]  # warm start
    assert "previous-model" in tasks["evaluate"]["dependentTasks"]  # production scored on the same rows
    assert "evaluate" in tasks["promote"]["dependentTasks"]
    for profile_name in LOCAL_PROFILES:
        assert not load_config(profile_name)[0].retrain.enabled


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
