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
