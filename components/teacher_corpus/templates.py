"""Teacher prompt templates: versioned YAML files, loaded and checked before any request.

Each enrichment step has one file, ``prompts/<version>/<step>.yaml``, with a ``system`` and a
``user`` turn using ``$placeholders`` (``string.Template``: the item texts they receive may hold
braces). A template's hash is the sha256 of its file bytes: it is logged to MLflow and written
in the ``prompt_hash`` column, so every teacher row names the exact prompts that produced it.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.common import storage
from components.common.errors import InputError

PACKAGED = Path(__file__).parent / "prompts"

#: Step -> the placeholders its template must use (and the only ones it may use).
STEP_FIELDS: dict[str, set[str]] = {
    "item_analysis": {"title", "brand", "categories", "description"},
    "item_narrative": {"sid", "analysis"},
    "user_reasoning": {"history", "history_length", "target_title", "target_category"},
    "user_narrative": {"history_sids", "reasoning", "target_sid"},
}
STEPS = tuple(STEP_FIELDS)


class TemplateError(InputError):
    """A template file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class PromptTemplate:
    """One step's prompt: system and user turns, and the hash of the file they came from."""

    step: str
    system: str | None
    user: str
    hash: str
    source: str

    def render(self, fields: dict[str, str]) -> list[dict[str, str]]:
        """Chat messages for ``fields`` (every placeholder must be given)."""
        messages = []
        if self.system:
            messages.append({"role": "system", "content": string.Template(self.system).substitute(fields)})
        messages.append({"role": "user", "content": string.Template(self.user).substitute(fields)})
        return messages


def _placeholders(text: str) -> set[str]:
    return {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text)
            if m.group("named") or m.group("braced")}


def parse_template(step: str, data: bytes, source: str) -> PromptTemplate:
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{source}: invalid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("user"), str) or not doc["user"].strip():
        raise TemplateError(f"{source}: needs a non-empty 'user' string (and optionally 'system')")
    unknown_keys = set(doc) - {"system", "user"}
    if unknown_keys:
        raise TemplateError(f"{source}: unknown key(s) {sorted(unknown_keys)}; expected system, user")
    system = doc.get("system")
    if system is not None and not isinstance(system, str):
        raise TemplateError(f"{source}: 'system' must be a string")
    used = _placeholders(doc["user"]) | (_placeholders(system) if system else set())
    expected = STEP_FIELDS[step]
    if used != expected:
        missing, unknown = sorted(expected - used), sorted(used - expected)
        raise TemplateError(f"{source}: placeholders must be {sorted(expected)}"
                            + (f"; missing {missing}" if missing else "")
                            + (f"; unknown {unknown}" if unknown else ""))
    return PromptTemplate(step=step, system=system, user=doc["user"],
                          hash=hashlib.sha256(data).hexdigest()[:16], source=source)


def load_templates(version: str, uri: str | None = None) -> dict[str, PromptTemplate]:
    """Every step's template from ``uri`` (a folder, local or gs://) or the packaged ``version``."""
    root = uri or str(PACKAGED / version)
    if uri is None and not (PACKAGED / version).is_dir():
        known = sorted(p.name for p in PACKAGED.iterdir() if p.is_dir())
        raise TemplateError(f"no packaged prompt version {version!r} (known: {known})")
    templates = {}
    for step in STEPS:
        source = storage.join(root, f"{step}.yaml")
        try:
            data = storage.read_bytes(source)
        except storage.StorageError:
            raise TemplateError(f"missing prompt template {source}") from None
        templates[step] = parse_template(step, data, source)
    return templates


def combined_hash(*templates: PromptTemplate) -> str:
    """One hash for the templates that produced a row (step 1 and step 2)."""
    return hashlib.sha256("+".join(t.hash for t in templates).encode()).hexdigest()[:16]
