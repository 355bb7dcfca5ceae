"""The sidreasoner CLI: compile to IR, run locally through kfp.local, submit and schedule."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from pipeline import cli
from pipeline.config import CONFIG_DIR, DECLARATIONS, STAGES
from pipeline.dag import output_name
from tests.pipeline.kfp_api import FakeKfpApi

CLUSTER = [
    "tracking.uri=http://mlflow.sidreasoner.svc:5000",
    "ingest.source=gs://catalog/office/2026-11-01",
    "storage.cache_uri=gs://sidreasoner/cache",
    "storage.pipeline_root=gs://sidreasoner/pipeline-root",
    "resources.ingest.cpu_request=4",
    "resources.ingest.memory_limit=32G",
    "resources.ingest.gpus=1",
    "resources.ingest.retries=3",
    "resources.ingest.caching=true",
    "resources.ingest.shm_size=2Gi",
    "resources.ingest.node_selector={cloud.google.com/gke-accelerator: nvidia-l4}",
    "resources.ingest.tolerations=[{key: nvidia.com/gpu, effect: NoSchedule}]",
    "kubernetes.secrets=[{secret_name: teacher-api, env: {TEACHER_API_KEY: api-key}, stages: [ingest]}]",
    "retrain.registered_model=sidreasoner-office",  # the DAG with every stage
]


def _sets(values):
    return [arg for v in values for arg in ("--set", v)]


def _ir(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def test_compile_writes_ir_with_images_resources_and_platform(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-do-not-compile-me")
    out = tmp_path / "pipeline.yaml"
    assert cli.main(["compile", "--config", "demo", "--registry", "europe-docker.pkg.dev/p/sid", "--tag",
                     "abc123", "--out", str(out), *_sets(CLUSTER)]) == 0
    text = out.read_text()
    assert "sk-do-not-compile-me" not in text
    spec, platform = _ir(out)
    assert spec["defaultPipelineRoot"] == "gs://sidreasoner/pipeline-root"
    assert set(spec["root"]["dag"]["tasks"]) == {stage.replace("_", "-") for stage in STAGES}  # kfp task names
    executors = spec["deploymentSpec"]["executors"]
    ingest = executors["exec-ingest"]["container"]
    assert ingest["image"] == "europe-docker.pkg.dev/p/sid/ingest:abc123"
    assert ingest["resources"]["cpuRequest"] == 4
    assert ingest["resources"]["memoryLimit"] == 32
    assert ingest["resources"]["accelerator"]["resourceCount"] == "1"
    assert {"name": "LITELLM_LOCAL_MODEL_COST_MAP", "value": "True"} in ingest["env"]
    assert "pip install" not in " ".join(ingest["command"])  # install_kfp_package=False
    task = spec["root"]["dag"]["tasks"]["ingest"]
    assert task["retryPolicy"]["maxRetryCount"] == 3
    assert task["cachingOptions"].get("enableCache") is True
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-ingest"]
    assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert k8s["secretAsEnv"][0]["secretName"] == "teacher-api"
    assert k8s["secretAsEnv"][0]["keyToEnv"][0] == {"secretKey": "api-key", "envVar": "TEACHER_API_KEY"}
    assert k8s["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert k8s["podMetadata"]["labels"]["sidreasoner/stage"] == "ingest"
    assert set(spec["root"]["outputDefinitions"]["artifacts"]) == {
        output_name(stage, name) for stage, decl in DECLARATIONS.items() for name in decl.outputs}
    for stage in STAGES:  # every task runs in its own stage image
        image = executors[f"exec-{stage.replace('_', '-')}"]["container"]["image"]
        assert image == f"europe-docker.pkg.dev/p/sid/{stage.replace('_', '-')}:abc123"
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "producerTask": "grpo", "outputArtifactKey": "model"}
    assert tasks["reason-sft"]["inputs"]["artifacts"]["sft_model"]["taskOutputArtifact"] == {
        "producerTask": "align-sft", "outputArtifactKey": "model"}
    for consumer in ("sid-quantize", "align-sft", "promote"):  # scheduled retraining continues production
        assert tasks[consumer]["inputs"]["artifacts"]["previous"]["taskOutputArtifact"] == {
            "producerTask": "previous-model", "outputArtifactKey": "previous"}
    assert tasks["promote"]["inputs"]["artifacts"]["metrics"]["taskOutputArtifact"]["producerTask"] == "evaluate"
    # the baselines train on a CPU step of their own, beside training; evaluate reads their rankings
    assert set(tasks["baselines"]["dependentTasks"]) == {"ingest", "sid-quantize"}
    assert tasks["evaluate"]["inputs"]["artifacts"]["rankings"]["taskOutputArtifact"] == {
        "producerTask": "baselines", "outputArtifactKey": "rankings"}
    sid_task = spec["root"]["dag"]["tasks"]["sid-quantize"]
    assert sid_task["inputs"]["artifacts"]["items"]["taskOutputArtifact"] == {
        "producerTask": "ingest", "outputArtifactKey": "items"}
    assert executors["exec-sid-quantize"]["container"]["image"] == "europe-docker.pkg.dev/p/sid/sid-quantize:abc123"
    outputs = spec["components"]["comp-sid-quantize"]["outputDefinitions"]["artifacts"]
    assert outputs["codebooks"]["artifactType"]["schemaTitle"] == "system.Model"

    from kfp import components

    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "sidreasoner-demo"


def test_compile_demo_warns_but_submit_refuses_a_local_profile(tmp_path, capsys):
    assert cli.main(["compile", "--config", "demo", "--out", str(tmp_path / "p.yaml")]) == 0
    assert cli.main(["submit", "--config", "demo", "--host", "http://127.0.0.1:9"]) == 2
    assert "tracking.uri must be an MLflow server URL" in capsys.readouterr().err


def test_invalid_config_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "--config", "demo", "--out", str(out), "--set", "ingest.preprocess.k_cor=2"]) == 2
    assert "ingest.preprocess.k_cor: unknown key (did you mean 'k_core'?)" in capsys.readouterr().err
    assert not out.exists()


def test_submit_and_schedule_talk_to_the_kfp_api():
    with FakeKfpApi() as api:
        assert cli.main(["submit", "--config", "demo", "--host", api.url, "--experiment", "nightly",
                         *_sets(CLUSTER)]) == 0
        assert cli.main(["schedule", "--config", "demo", "--host", api.url, "--cron", "0 3 * * *",
                         *_sets(CLUSTER)]) == 0
    run = api.posted("/runs")[0]
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "sidreasoner-demo"
    assert "teacher-api" in json.dumps(run["pipeline_spec"]["platform_spec"])
    assert api.posted("/experiments")[0]["display_name"] == "nightly"
    job = api.posted("/recurringruns")[0]
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"  # KFP's 6-field cron
    assert job["max_concurrency"] == "1" or job["max_concurrency"] == 1
    assert job["no_catchup"] is True


def test_cron_validation():
    assert cli.normalize_cron("*/5 * * * *") == "0 */5 * * * *"
    with pytest.raises(Exception, match="expected 5 fields"):
        cli.normalize_cron("* * *")


def test_stage_cli_help_and_by_hand_run(tmp_path, demo_data):
    help_out = subprocess.run([sys.executable, "-m", "components.ingest", "--help"], capture_output=True,
                              text=True, check=True).stdout
    assert "--config" in help_out and "items.parquet" in help_out
    out = tmp_path / "ingest"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # default: sqlite in --out
    proc = subprocess.run([sys.executable, "-m", "components.ingest", "--config", str(CONFIG_DIR / "demo.yaml"), "--out", str(out),
                           "--set", f"ingest.source={demo_data}", "--set", "ingest.preprocess.min_window_items=50",
                           # not the demo's shared store, build/mlflow.db (which its registered model needs)
                           "--set", "tracking.uri=null", "--set", "retrain.registered_model=null"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name for p in out.iterdir()} >= {"items.parquet", "samples.parquet", "stats.json", "mlflow.db"}
    assert json.loads(proc.stdout)["metadata"]["items"]["rows"] > 0


def test_cluster_problems_name_local_sid_quantize_uris():
    from pipeline.config import load_config

    cfg, _ = load_config("demo", CLUSTER)
    assert cfg.cluster_problems() == []  # the bundled encoder ships in the image
    cfg, _ = load_config("demo", [*CLUSTER, "retrain.registered_model=null",
                                  "sid_quantize.encoder.model=/models/qwen3-embedding",
                                  "sid_quantize.incremental.previous_sid_map=build/run/sid_map.parquet",
                                  "sid_quantize.incremental.previous_codebooks=gs://b/run/codebooks"])
    assert cfg.cluster_problems() == [
        "sid_quantize.encoder.model must be a gs:// URI on a cluster (got '/models/qwen3-embedding')",
        "sid_quantize.incremental.previous_sid_map must be a gs:// URI on a cluster (got 'build/run/sid_map.parquet')",
    ]


def test_hardware_the_run_cannot_have_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "--config", "demo", "--out", str(out), "--set", "align_sft.bf16=true"]) == 2
    assert "align_sft.bf16: bf16 was requested but no GPU is visible" in capsys.readouterr().err
    assert not out.exists()
    # on a cluster the same check uses the GPUs each step requests
    assert cli.main(["compile", "--config", "demo", "--out", str(tmp_path / "p.yaml"), "--set",
                     "grpo.bf16=true"]) == 2
    assert cli.main(["compile", "--config", "demo", "--out", str(tmp_path / "p.yaml"), "--set", "grpo.bf16=true",
                     "--set", "resources.grpo.gpus=1"]) == 0
