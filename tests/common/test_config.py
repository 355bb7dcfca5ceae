"""Profiles load and validate; bad config fails before any work with errors naming the key."""

from __future__ import annotations

import pytest

from components.common.config import ConfigError, apply_overrides, load_yaml
from pipeline.config import CONFIG_DIR, load_config

PROFILES = sorted(CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_profile_loads_and_validates(profile):
    cfg, name = load_config(str(profile))
    assert name == profile.stem
    assert cfg.run.name


def test_profile_by_name_and_overrides():
    cfg, _ = load_config("demo", ["ingest.preprocess.k_core=3", "run.seed=7",
                                  "ingest.preprocess.split=[0.7, 0.2, 0.1]"])
    assert cfg.ingest.preprocess.k_core == 3
    assert cfg.run.seed == 7
    assert cfg.ingest.preprocess.split == [0.7, 0.2, 0.1]


@pytest.mark.parametrize("override, message", [
    (["ingest.preprocess.kcore=3"], r"ingest\.preprocess\.kcore: unknown key \(did you mean 'k_core'\?\)"),
    (["ingest.preprocess.k_core='3'"], r"ingest\.preprocess\.k_core: Input should be a valid integer"),
    (["ingest.preprocess.k_core=0"], r"ingest\.preprocess\.k_core: Input should be greater than or equal to 1"),
    (["ingest.format=amazon19"], r"ingest\.format: Input should be 'amazon18'"),
    (["ingest.preprocess.split=[0.5, 0.6, 0.1]"], r"ingest\.preprocess\.split: must be three"),
    (["ingest.preprocess.window_start=2019-01-01"], r"window_start 2019-01-01 must be before"),
    (["resources.ingest.memory_request=lots"], r"resources\.ingest\.memory_request: 'lots' is not"),
    (["resources.ingest.gpus=-1"], r"resources\.ingest\.gpus"),
    (["resources.trainer.gpus=1"], r"resources\.trainer: unknown key"),
    (["kubernetes.secrets=[{secret_name: s, env: {K: k}, stages: [nope]}]"], r"unknown stage\(s\) \['nope'\]"),
    (["run.name=Has Spaces"], r"run\.name: String should match pattern"),
    (["retrain.registered_model=m", "tracking.uri=null"],  # the demo's own store unset
     r"retrain\.registered_model: .*tracking\.uri must name a store"),
    (["retrain.registered_model=m", "tracking.uri=http://mlflow:5000", "retrain.k=20"],
     r"retrain\.k 20 is not reported"),
    (["retrain.registered_model=m", "tracking.uri=http://mlflow:5000", "evaluate.modes=[direct]"],
     r"retrain\.mode 'thinking' is not evaluated"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", override)


def test_missing_required_section_field(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("ingest:\n  source: x\n")
    with pytest.raises(ConfigError, match=r"ingest\.format: Field required"):
        load_config(str(path))


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="demo"):
        load_config("no-such-profile")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["no-equals-sign"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"run": {"seed": 1}}, ["run.seed.x=2"])


def test_yaml_reads_scientific_notation_as_float(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("a: 1e-3\nb: 5e-7\nc: 2016-10-01\n")
    data = load_yaml(path)
    assert data["a"] == pytest.approx(1e-3) and data["b"] == pytest.approx(5e-7)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        load_yaml(path)


def test_demo_is_not_cluster_ready_but_a_gcs_profile_is():
    cfg, _ = load_config("demo")
    problems = cfg.cluster_problems()
    assert any("tracking.uri" in p for p in problems)
    assert any("ingest.source" in p for p in problems)
    cfg, _ = load_config("demo", ["tracking.uri=http://mlflow.mlflow:5000", "ingest.source=gs://b/raw",
                                  "storage.cache_uri=gs://b/cache", "storage.pipeline_root=gs://b/root"])
    assert cfg.cluster_problems() == []
