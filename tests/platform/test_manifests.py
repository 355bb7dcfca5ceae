"""Kubernetes manifests render with kustomize and validate against Kubernetes schemas offline."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
K8S_VERSION = "1.33.0"


def render(target: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(["kubectl", "kustomize", str(MANIFESTS / target)], capture_output=True, text=True,
                         check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", ["base", "overlays/gke"])
def test_renders_and_validates(target):
    docs = render(target)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Namespace", "sidreasoner"), ("Deployment", "mlflow"), ("Service", "mlflow"),
            ("StatefulSet", "mlflow-postgres"), ("ServiceAccount", "sidreasoner-pipeline")} <= kinds
    for doc in docs:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "sidreasoner"


def test_mlflow_is_not_exposed_publicly():
    docs = render("overlays/gke")
    services = [d for d in docs if d["kind"] == "Service"]
    assert services and all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services)
    assert not [d for d in docs if d["kind"] in ("Ingress", "Gateway", "HTTPRoute")]
    policies = {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert {"mlflow-ingress", "postgres-ingress"} <= policies


def test_gke_overlay_binds_workload_identity_and_gcs_artifacts():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("overlays/gke")}
    for sa in ("sidreasoner-pipeline", "sidreasoner-mlflow"):
        annotations = docs[("ServiceAccount", sa)]["metadata"]["annotations"]
        assert annotations["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    assert docs[("ConfigMap", "mlflow-settings")]["data"]["artifact-root"].startswith("gs://")
    image = docs[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "REGISTRY/mlflow-server:TAG"


def test_no_secret_values_anywhere():
    docs = render("overlays/gke")
    assert not [d for d in docs if d["kind"] == "Secret"]  # secrets are created out of band
    for template in sorted((MANIFESTS / "secrets").glob("*.yaml")):
        secret = yaml.safe_load(template.read_text())
        validate(secret)
        assert secret["kind"] == "Secret"
        assert all(value == "" for value in secret.get("stringData", {}).values()), template.name
        assert "data" not in secret


# ----------------------------------------------------------------------------------------------
# Serving: KServe InferenceServices (manifests/serving/{cpu,gpu})
# ----------------------------------------------------------------------------------------------

SERVING_VARIANTS = ("serving/cpu", "serving/gpu")
#: The fields KServe's v1beta1 PredictorSpec adds to a Kubernetes PodSpec (ComponentExtensionSpec
#: and the model-format specs; kserve python SDK V1beta1PredictorSpec): the rest of a predictor is
#: a PodSpec, validated as one.
KSERVE_PREDICTOR_FIELDS = {
    "annotations": dict, "autoScaling": dict, "batcher": dict, "canaryTrafficPercent": int,
    "containerConcurrency": int, "deploymentStrategy": dict, "labels": dict, "logger": dict, "maxReplicas": int,
    "minReplicas": int, "model": dict, "scaleMetric": str, "scaleMetricType": str, "scaleTarget": int,
    "storageUris": list, "timeout": int, "workerSpec": dict, **dict.fromkeys(
        ("huggingface", "lightgbm", "onnx", "paddle", "pmml", "pytorch", "sklearn", "tensorflow", "triton",
         "xgboost"), dict)}
SCALE_METRICS = {"cpu", "memory", "concurrency", "rps"}


def validate_inference_service(doc: dict) -> dict:
    """An InferenceService: its KServe fields by the API's types, its pod by Kubernetes' schema
    (strict, as every other manifest). Returns the predictor's pod spec."""
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(doc["spec"]) == {"predictor"}
    predictor = dict(doc["spec"]["predictor"])
    for field, kind in KSERVE_PREDICTOR_FIELDS.items():
        if field in predictor:
            assert isinstance(predictor.pop(field), kind), field
    assert doc["spec"]["predictor"].get("scaleMetric", "cpu") in SCALE_METRICS
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": doc["metadata"]["name"]}, "spec": predictor})
    return predictor


@pytest.fixture(scope="module", params=SERVING_VARIANTS)
def serving(request) -> tuple[str, dict, dict]:
    """(variant, rendered documents by (kind, name), the InferenceService's container)."""
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(request.param)}
    (isvc,) = [d for (kind, _), d in docs.items() if kind == "InferenceService"]
    (container,) = isvc["spec"]["predictor"]["containers"]
    return request.param, docs, container


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_serving_variants_render_and_validate(serving):
    variant, docs, _ = serving
    for (kind, _name), doc in docs.items():
        if kind == "InferenceService":
            validate_inference_service(doc)
        else:
            validate(doc)
        assert doc["metadata"]["namespace"] == "sidreasoner"
    assert {("InferenceService", "sidreasoner-recommender"), ("ServiceAccount", "sidreasoner-serving"),
            ("ConfigMap", "serving-settings")} == set(docs)


def test_serving_runs_the_recommend_stage_image_as_the_pipeline_does(serving):
    """The recommend stage's image (its code reaches the served pyfunc and mlflow), non-root with
    the image's UID, read-only, no privilege, no API token, no secret."""
    from pipeline import images

    _, docs, container = serving
    assert images.image_flavour("recommend") == "cuda"
    assert {"components/common/serving.py", "components/common/decoding.py"} <= images.reach("recommend").files
    assert {"mlflow", "uvicorn", "fastapi"} <= {line.split("==")[0] for line in
                                                (REPO / "requirements/stages/recommend.lock.txt").read_text().split()
                                                if "==" in line}
    assert container["image"] == "REGISTRY/recommend:TAG"
    pod = docs[("InferenceService", "sidreasoner-recommender")]["spec"]["predictor"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000  # the image's user
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert pod["serviceAccountName"] == "sidreasoner-serving" and pod["automountServiceAccountToken"] is False
    assert docs[("ServiceAccount", "sidreasoner-serving")]["automountServiceAccountToken"] is False
    assert not [d for (kind, _), d in docs.items() if kind == "Secret"]
    assert not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]  # nothing secret needed


def test_serving_loads_the_registered_model_from_the_pipelines_registry(serving):
    from pipeline.config import load_config

    _, docs, container = serving
    assert container["command"] == ["python3", "-m", "mlflow", "models", "serve"]
    args = container["args"]
    assert args[args.index("-m") + 1] == "$(MODEL_URI)" and args[args.index("--env-manager") + 1] == "local"
    assert args[args.index("--port") + 1] == str(container["ports"][0]["containerPort"]) == "8080"
    settings = docs[("ConfigMap", "serving-settings")]["data"]
    env = env_of(container)
    assert env["MODEL_URI"] == {"configMapKeyRef": {"name": "serving-settings", "key": "model-uri"}}
    assert env["MLFLOW_TRACKING_URI"] == {"configMapKeyRef": {"name": "serving-settings", "key": "tracking-uri"}}
    cfg, _ = load_config("office-qwen3-1.7b")
    assert settings["model-uri"] == f"models:/{cfg.retrain.registered_model}@{cfg.retrain.alias}"
    assert settings["tracking-uri"] == cfg.tracking.uri
    assert all(probe["httpGet"] == {"path": "/ping", "port": 8080}
               for probe in (container["startupProbe"], container["readinessProbe"], container["livenessProbe"]))


def test_serving_variants_choose_the_engine_by_the_models_settings(serving, cluster_facts):
    import json

    from components.common.serving_config import ServingSettings

    variant, docs, container = serving
    overrides = json.loads(env_of(container)["SERVING_MODEL_CONFIG"])
    assert set(overrides) <= set(ServingSettings.model_fields)  # keys the logged model_config has
    settings = ServingSettings.model_validate(overrides)
    pod = docs[("InferenceService", "sidreasoner-recommender")]["spec"]["predictor"]
    limits = container["resources"]["limits"]
    if variant == "serving/gpu":
        assert (settings.engine, settings.device, settings.dtype) == ("vllm", "cuda", "bfloat16")
        assert limits["nvidia.com/gpu"] == "1" == container["resources"]["requests"]["nvidia.com/gpu"]
        (label, pool), = pod["nodeSelector"].items()
        assert label == cluster_facts["label"] and pool in cluster_facts["pools"]
        assert pod["tolerations"] == [{"operator": "Equal", **cluster_facts["taint"]}]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": cluster_facts["shm"]}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    else:
        assert (settings.engine, settings.device) == ("transformers", "cpu")
        assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod and "tolerations" not in pod


@pytest.fixture(scope="module")
def cluster_facts() -> dict:
    data = yaml.safe_load((MANIFESTS / "base" / "cluster-facts.yaml").read_text())["data"]
    taint, effect = data["gpu-taint"].split(":")
    key, value = taint.split("=")
    return {"label": data["gpu-node-label-key"], "pools": set(data["gpu-node-pools"].split()),
            "taint": {"key": key, "value": value, "effect": effect}, "shm": data["dshm-size"]}
