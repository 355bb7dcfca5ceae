"""The ``teacher_corpus`` section and the prompt templates: defaults, validation, hashes."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from components.common.config import ConfigError
from components.common.prompts import DIRECT_SYSTEM, REASONING_SYSTEM
from components.teacher_corpus.config import DETERMINISTIC_TASKS, PREAMBLE, TeacherCorpusConfig
from components.teacher_corpus.templates import PACKAGED, STEPS, TemplateError, load_templates
from tests.teacher_corpus.helpers import config

#: The section the demo profile uses (reported to the lead for pipeline/configs/demo.yaml).
DEMO_SECTION = """
teacher:
  backend: offline
enrichment:
  items: null
  users: 300
"""


def test_defaults_are_the_recipe():
    cfg = TeacherCorpusConfig()
    assert cfg.tasks.enabled == list(DETERMINISTIC_TASKS) and len(DETERMINISTIC_TASKS) == 6
    assert cfg.tasks.item_scope == "catalog" and cfg.enrichment.items is None
    assert cfg.teacher.backend == "litellm" and cfg.teacher.api_key_env == "OPENAI_API_KEY"
    phrasings = cfg.tasks.templates.title_history_to_title
    assert len(phrasings) == 11 and len({p.user for p in phrasings}) == 11
    assert cfg.tasks.templates.title_to_sid[0].user == "Which item has the title: {title}?"
    assert cfg.tasks.templates.sid_to_title[0].user == 'What is the title of item "{sid}"?'


def test_preamble_matches_the_shared_prompts():
    assert DIRECT_SYSTEM.startswith(PREAMBLE) and REASONING_SYSTEM.startswith(PREAMBLE)


def test_demo_section_validates():
    cfg = config(**yaml.safe_load(DEMO_SECTION))
    assert cfg.teacher.backend == "offline" and cfg.enrichment.users == 300


@pytest.mark.parametrize("section, message", [
    ({"teacher": {"api_key_env": "sk-live-abcdef123456"}},
     r"teacher\.api_key_env: must be the NAME of an environment variable"),
    ({"teacher": {"concurrency": 0}}, r"teacher\.concurrency: Input should be greater than or equal to 1"),
    ({"teacher": {"backend": "gpt"}}, r"teacher\.backend: Input should be 'litellm' or 'offline'"),
    ({"teacher": {"backoff_initial_s": 5.0, "backoff_max_s": 1.0}}, r"backoff_initial_s \(5\.0\) must be <="),
    ({"teacher": {"price": {"input_usd_per_million": 1.0}}}, r"set both input_usd_per_million"),
    ({"teacher": {"budget": {"max_requests": 0}}}, r"teacher\.budget\.max_requests"),
    ({"validation": {"user_reasoning": {"min_chars": 500, "max_chars": 100}}}, r"min_chars \(500\) must be <="),
    ({"tasks": {"enabled": ["title_to_sid", "title_to_sid"]}}, r"lists a task twice"),
    ({"tasks": {"enabled": ["sid_to_sid"]}}, r"tasks\.enabled\.0: Input should be"),
    ({"tasks": {"templates": {"sid_to_title": [{"user": "Title of {item}?"}]}}},
     r"sid_to_title\.0\.user: must use exactly the placeholder\(s\) \['\{sid\}'\]"),
    ({"tasks": {"templates": {"title_history_to_title": []}}}, r"title_history_to_title: needs at least one"),
    ({"tasks": {"templates": {"sid_history_to_sid": [{"user": "{history}"}]}}},
     r"tasks\.templates\.sid_history_to_sid: unknown key"),
    ({"enrichment": {"userz": 3}}, r"enrichment\.userz: unknown key \(did you mean 'users'\?\)"),
    ({"enrichment": {"reasoning_max_words": 8}}, r"enrichment\.reasoning_max_words: Input should be greater than or equal to 16"),
    ({"enrichment": {"reasoning_max_words": "short"}}, r"enrichment\.reasoning_max_words: Input should be a valid integer"),
    ({"enrichment": {"interest_kinds": 4}}, r"enrichment\.interest_kinds: Input should be less than or equal to 3"),
    ({"teacher": {"backend": "litellm"}, "enrichment": {"interest_kinds": 2}},
     r"enrichment\.interest_kinds 2 is the offline writer's \(teacher\.backend: offline\)"),
])
def test_bad_values_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message) as info:
        config(**section)
    assert "sk-live-abcdef123456" not in str(info.value)


def test_packaged_templates_load_with_file_hashes():
    templates = load_templates("v1")
    assert set(templates) == set(STEPS)
    for step, template in templates.items():
        data = (PACKAGED / "v1" / f"{step}.yaml").read_bytes()
        assert template.hash == hashlib.sha256(data).hexdigest()[:16]
    messages = templates["item_narrative"].render({"sid": "<a_1><b_2><c_3>", "analysis": "costs $5 {x}"})
    assert messages[0]["role"] == "system" and "<a_1><b_2><c_3>" in messages[1]["content"]
    assert "costs $5 {x}" in messages[1]["content"]


def test_custom_templates_are_checked(tmp_path):
    for step in STEPS:
        (tmp_path / f"{step}.yaml").write_bytes((PACKAGED / "v1" / f"{step}.yaml").read_bytes())
    assert load_templates("v1", str(tmp_path))["user_reasoning"].source == str(tmp_path / "user_reasoning.yaml")
    (tmp_path / "user_reasoning.yaml").write_text("user: Reason about $history, aiming at $target_sid\n")
    with pytest.raises(TemplateError, match=r"user_reasoning\.yaml: placeholders must be .*missing "
                                            r"\['history_length', 'target_category', 'target_title'\]; "
                                            r"unknown \['target_sid'\]"):
        load_templates("v1", str(tmp_path))
    (tmp_path / "item_analysis.yaml").unlink()
    with pytest.raises(TemplateError, match=r"missing prompt template .*item_analysis\.yaml"):
        load_templates("v1", str(tmp_path))
    with pytest.raises(TemplateError, match=r"no packaged prompt version 'v9' \(known: \['v1'\]\)"):
        load_templates("v9")
