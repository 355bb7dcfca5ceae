"""The kfp component and the CLI entry point. (No ``from __future__ import annotations``: kfp
reads the pipeline function's annotations as real types.)"""

import subprocess
import sys
from pathlib import Path

import yaml
from kfp import compiler, dsl

from components.teacher_corpus import component

REPO = Path(__file__).resolve().parents[2]


def test_component_compiles_with_its_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-in-the-ir-123456")
    op = component.build("registry.example/sidreasoner/teacher-corpus:abc")

    @dsl.pipeline(name="teacher-corpus-only")
    def pipeline(config: str = "{}", context: str = "{}"):
        inputs = {name: dsl.importer(artifact_uri=f"gs://b/{name}", artifact_class=dsl.Dataset).output
                  for name in ("items", "samples", "sid_map")}
        op(config=config, context=context, run_key="", pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **inputs)

    out = tmp_path / "ir.yaml"
    compiler.Compiler().compile(pipeline, str(out))
    text = out.read_text()
    spec = yaml.safe_load(text)
    comp = spec["components"]["comp-teacher-corpus"]
    assert set(comp["inputDefinitions"]["artifacts"]) == {"items", "samples", "sid_map"}
    outputs = comp["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "corpus": "system.Dataset", "reasoning": "system.Dataset", "stats": "system.Artifact"}
    executor = spec["deploymentSpec"]["executors"]["exec-teacher-corpus"]["container"]
    assert executor["image"] == "registry.example/sidreasoner/teacher-corpus:abc"
    assert "sk-never-in-the-ir" not in text


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "components.teacher_corpus", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=True)
    assert "--sid-map URI" in result.stdout and "teacher_corpus" in result.stdout
