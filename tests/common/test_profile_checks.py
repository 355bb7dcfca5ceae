"""What a stage CLI checks of a profile before any work: every section and ``--set`` override as
``sidreasoner validate`` does (dev venv), or what a stage image can check without the other
stages' configs; and no secret anywhere in a profile."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import yaml

from components.common import config as common_config
from components.common import stage as stage_module
from components.common.config import SHARED_SECTIONS, STAGE_SECTIONS, ConfigError, check_no_secrets
from components.ingest import STAGE as INGEST
from components.sid_quantize import STAGE as SID_QUANTIZE
from pipeline.config import RunConfig, load_config

SECRET = "sk-live-0123456789abcdef"


def test_the_full_validator_is_registered():
    found = [ep for ep in entry_points(group="sidreasoner.profile") if ep.name == "validate"]
    assert found and found[0].value == "pipeline.config:validate_profile", (
        "the sidreasoner.profile entry point is missing: run `make install` (pyproject.toml changed)")


def test_stage_images_know_every_section_of_a_profile():
    assert set(SHARED_SECTIONS) | set(STAGE_SECTIONS) == set(RunConfig.model_fields), (
        "a profile section was added or removed: update components.common.config.STAGE_SECTIONS")


def _cli(stage, tmp_path, sets, sections=None, capsys=None):
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(sections or {}))
    argv = ["--config", str(profile), "--out", str(tmp_path / "out"), "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}"]
    if "items" in stage.inputs:
        argv += ["--items", str(tmp_path / "absent.parquet")]
    for item in sets:
        argv += ["--set", item]
    code = stage.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("sets, message", [
    (["ingset.preprocess.k_core=50"], "ingset: unknown key (did you mean 'ingest'?)"),
    (["evaluate.beam_widht=5"], "evaluate.beam_widht: unknown key (did you mean 'beam_width'?)"),
    (["ingest.preprocess.k_core=0"], "ingest.preprocess.k_core: Input should be greater than or equal to 1"),
    (["resources.grpo.gpus=-1"], "resources.grpo.gpus: Input should be greater than or equal to 0"),
    ([f"teacher_corpus.teacher.extra_params.api_key={SECRET}"],
     "teacher_corpus.teacher.extra_params.api_key: looks like a secret"),
])
def test_a_stage_cli_validates_every_section_before_any_work(tmp_path, capsys, sets, message):
    code, err = _cli(SID_QUANTIZE, tmp_path, sets, capsys=capsys)
    assert code == ConfigError.exit_code and message in err and "Traceback" not in err
    assert SECRET not in err and not (tmp_path / "out").exists()


def test_a_profile_for_one_stage_needs_no_other_stage_section(tmp_path, capsys):
    """``ingest`` and ``align_sft`` have required fields, yet a sid_quantize profile may omit them."""
    code, err = _cli(SID_QUANTIZE, tmp_path, [], {"sid_quantize": {"codebook_sizes": [4, 4]}}, capsys=capsys)
    assert code != 0 and "absent.parquet" in err  # got past validation to the missing input
    code, err = _cli(INGEST, tmp_path, ["ingest.preprocess.k_core=3"], {}, capsys=capsys)
    assert code == ConfigError.exit_code and "ingest.source: Field required" in err  # its own section is required


def test_inside_a_stage_image_the_cli_still_refuses_unknown_sections(tmp_path, capsys, monkeypatch):
    """Without ``pipeline/`` (no entry point), typos of section names, shared sections, the
    stage's own section and secrets are still caught; other stages' contents cannot be."""
    monkeypatch.setattr(stage_module, "entry_points", lambda group: [])
    code, err = _cli(SID_QUANTIZE, tmp_path, ["ingset.preprocess.k_core=50"], capsys=capsys)
    assert code == ConfigError.exit_code and "ingset: unknown key (did you mean 'ingest'?)" in err
    code, err = _cli(SID_QUANTIZE, tmp_path, ["storage.cache_urii=x"], capsys=capsys)
    assert "storage.cache_urii: unknown key (did you mean 'cache_uri'?)" in err
    code, err = _cli(SID_QUANTIZE, tmp_path, ["resources.sid_quantize.gpus=-1"], capsys=capsys)
    assert "resources.sid_quantize.gpus: Input should be greater than or equal to 0" in err
    code, err = _cli(SID_QUANTIZE, tmp_path, [f"align_sft.trainer_args.hub_token={SECRET}"], capsys=capsys)
    assert "align_sft.trainer_args.hub_token: looks like a secret" in err and SECRET not in err
    code, err = _cli(SID_QUANTIZE, tmp_path, ["evaluate.beam_widht=5"], capsys=capsys)
    assert "absent.parquet" in err  # another stage's contents: not checkable in this image


@pytest.mark.parametrize("override", [
    f"teacher_corpus.teacher.extra_params.api_key={SECRET}",
    f"align_sft.trainer_args.hub_token={SECRET}",
    f"evaluate.vllm.extra.password={SECRET}",
    f"images.overrides.token={SECRET}",
])
def test_secret_looking_keys_are_refused_anywhere(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}: looks like a secret .*environment variable .*Kubernetes") as info:
        load_config("demo", [override])
    assert SECRET not in str(info.value)


def test_names_of_secrets_are_not_secrets():
    check_no_secrets({"teacher_corpus": {"teacher": {"api_key_env": "OPENAI_API_KEY", "max_tokens": 10,
                                                     "extra_params": {"use_auth_token": True}}},
                      "kubernetes": {"secrets": [{"secret_name": "teacher", "env": {"OPENAI_API_KEY": "api-key"},
                                                  "stages": ["teacher_corpus"]}]},
                      "align_sft": {"supervise_end_token": True}})
    cfg, _ = load_config("demo", ["kubernetes.secrets=[{secret_name: t, env: {TOKEN: token}, stages: [ingest]}]"])
    assert cfg.kubernetes.secrets[0].env == {"TOKEN": "token"}


def test_stage_sections_coming_from_the_pipeline_are_checked_too():
    with pytest.raises(ConfigError, match="teacher.extra_params.api_key: looks like a secret"):
        common_config.parse_section_json(
            INGEST.config, '{"source": "x", "teacher": {"extra_params": {"api_key": "sk-0123456789"}}}', "")
