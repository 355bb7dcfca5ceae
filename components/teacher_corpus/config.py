"""Config section ``teacher_corpus``: which alignment tasks are built, how the teacher is called,
how its outputs are checked, and how many items and users are enriched.

Defaults follow the recipe (RECIPE.md section 3): the six deterministic SID/language tasks with
the recipe's prompts, two-step item-centric and user-centric enrichment, every catalog item
enriched. The teacher model of the paper is unresolved (GPT-4o-mini or GPT-4o); the default is
``openai/gpt-4o-mini``. ``teacher.backend: offline`` writes the enrichment with the
deterministic offline writer instead (no API; rows marked ``source=offline``).
"""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.common.config import Section

#: The deterministic tasks (group A: SID<->title; group B: next item, four combinations).
DeterministicTask = Literal["title_to_sid", "sid_to_title", "sid_history_to_sid", "sid_history_to_title",
                            "title_history_to_sid", "title_history_to_title"]
DETERMINISTIC_TASKS: tuple[str, ...] = DeterministicTask.__args__  # type: ignore[attr-defined]
#: The teacher-written tasks (plain LM loss on the whole text).
NARRATIVE_TASKS = ("item_narrative", "user_narrative")

#: The preamble of every recipe prompt (identical to the one of ``components.common.prompts``;
#: a test keeps them equal).
PREAMBLE = ("Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request. ")

#: Placeholders each task's templates must use (and the only ones they may use).
TEMPLATE_FIELDS: dict[str, set[str]] = {
    "title_to_sid": {"title"},
    "sid_to_title": {"sid"},
    "sid_history_to_title": {"history"},
    "title_history_to_sid": {"history"},
    "title_history_to_title": {"history"},
}

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ChatTemplate(Section):
    """One phrasing of a task: an optional system turn and a user turn with ``{placeholders}``."""

    system: str | None = None
    """System turn (verbatim; no placeholders)."""
    user: str
    """User turn; ``{title}``, ``{sid}`` or ``{history}`` depending on the task."""


def _instruction(task: str, user: str) -> ChatTemplate:
    return ChatTemplate(system=PREAMBLE + task, user=user)


_NEXT_TITLE = "Can you recommend the next item for the user based on their interaction history?"

#: Eleven phrasings of "title history -> next title" (the recipe draws one of 11 at random).
_TITLE_HISTORY_TO_TITLE = [
    "The user bought these items, oldest first: {history}. What is the title of the item they will buy next?",
    "Here is a shopper's purchase history in chronological order: {history}. Name the product they are most likely to purchase next.",
    "Given the items this customer interacted with, in order: {history}, predict the title of their next item.",
    "A user has sequentially purchased {history}. Which product would you recommend to them next? Answer with its title.",
    "Purchase history (earliest to latest): {history}. Suggest the next item this user will want, by title.",
    "Based on the products a user has bought so far ({history}, in that order), what will they buy next? Give the item title.",
    "These are the items a customer chose, one after another: {history}. Recommend the title of a fitting next purchase.",
    "Considering this sequence of purchases: {history}, which item should be recommended next? Reply with the title only.",
    "The customer's previous items were {history}, listed in the order they were bought. Guess the title of the following item.",
    "After interacting with {history} (chronologically), what item is the user likely to pick next? Provide its title.",
    "Look at what this user bought in order: {history}. Write the title of the product you would recommend next.",
]

#: The recipe's phrasings per task (see RECIPE.md section 3; group B from MiniOneRec).
DEFAULT_TEMPLATES: dict[str, list[ChatTemplate]] = {
    "title_to_sid": [_instruction("Answer the question about item identification.",
                                  "Which item has the title: {title}?")],
    "sid_to_title": [_instruction("Answer the question about item identification.",
                                  'What is the title of item "{sid}"?')],
    "sid_history_to_title": [_instruction(
        _NEXT_TITLE, "The user has sequentially interacted with items {history}. Can you recommend the "
                     "next item for him? Tell me the title of the item.")],
    "title_history_to_sid": [_instruction(
        _NEXT_TITLE, "Given the title sequence of user historical interactive items: {history}, can you "
                     "recommend a suitable next item for the user?")],
    "title_history_to_title": [_instruction(_NEXT_TITLE, text) for text in _TITLE_HISTORY_TO_TITLE],
}


class TaskTemplates(Section):
    """Phrasings of the deterministic tasks; one is drawn per row (seeded). The main task
    ``sid_history_to_sid`` always uses the shared direct prompt of
    ``components.common.prompts`` (training, RL and evaluation must agree on it), so it has no
    entry here."""

    title_to_sid: list[ChatTemplate] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES["title_to_sid"]))
    """Title -> SID; placeholder {title}."""
    sid_to_title: list[ChatTemplate] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES["sid_to_title"]))
    """SID -> title; placeholder {sid}."""
    sid_history_to_title: list[ChatTemplate] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES["sid_history_to_title"]))
    """SID history -> next title; placeholder {history} (SIDs joined by ', ')."""
    title_history_to_sid: list[ChatTemplate] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES["title_history_to_sid"]))
    """Title history -> next SID; placeholder {history} (quoted titles joined by ', ')."""
    title_history_to_title: list[ChatTemplate] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES["title_history_to_title"]))
    """Title history -> next title; placeholder {history}; the recipe draws one of 11 phrasings."""

    @model_validator(mode="after")
    def _placeholders(self) -> TaskTemplates:
        for task, allowed in TEMPLATE_FIELDS.items():
            phrasings = getattr(self, task)
            if not phrasings:
                raise ValueError(f"{task}: needs at least one phrasing")
            for i, template in enumerate(phrasings):
                try:
                    used = {name for _, name, _, _ in string.Formatter().parse(template.user) if name is not None}
                except ValueError as exc:
                    raise ValueError(f"{task}.{i}.user: not a format string ({exc})") from None
                if used != allowed:
                    raise ValueError(f"{task}.{i}.user: must use exactly the placeholder(s) "
                                     f"{sorted('{' + f + '}' for f in allowed)} (uses {sorted(used)})")
        return self


class TasksConfig(Section):
    """The deterministic tasks, built from the catalog and the TRAIN split only."""

    enabled: list[DeterministicTask] = Field(default_factory=lambda: list(DETERMINISTIC_TASKS))
    """Tasks to build (default: all six)."""
    item_scope: Literal["catalog", "train"] = "catalog"
    """Items of the SID<->title tasks and of item-centric enrichment: ``catalog`` = every active
    item of the SID map (the recipe: "every item"; an item's title and SID are catalog facts, not
    interactions), ``train`` = only items that occur in train samples."""
    max_samples: int | None = Field(None, ge=1)
    """Cap on the train samples used by each next-item task (a seeded subsample); null: all."""
    templates: TaskTemplates = Field(default_factory=TaskTemplates)

    @field_validator("enabled")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a task twice: {value}")
        return value


class BudgetConfig(Section):
    """Spending limits of one stage run. When one is reached, no new request is sent, requests
    in flight finish (their responses are cached), and the stage writes what was done (or fails,
    see ``on_exhausted``). Cached responses cost nothing and do not count."""

    max_requests: int | None = Field(None, ge=1)
    """Most teacher requests (retries included); null: unlimited."""
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens (prompt + completion). Each request reserves its prompt estimate (one token
    per 3 characters) plus ``teacher.max_tokens`` before it is sent, so requests in flight do
    not overshoot the limit."""
    max_cost_usd: float | None = Field(None, gt=0)
    """Most estimated spend in USD (needs a price: litellm's cost map or ``teacher.price``).
    Reserved like ``max_tokens``."""
    on_exhausted: Literal["write_partial", "fail"] = "write_partial"
    """``write_partial``: write the corpus with the enrichment done so far (stats say the budget
    ran out); ``fail``: fail the stage (the cache keeps every response; a re-run resumes)."""


class PriceConfig(Section):
    """Teacher price per million tokens, for models litellm's cost map does not know
    (self-hosted endpoints). Unset: litellm's price for ``teacher.model``, if it has one."""

    input_usd_per_million: float | None = Field(None, ge=0)
    output_usd_per_million: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _both(self) -> PriceConfig:
        if (self.input_usd_per_million is None) != (self.output_usd_per_million is None):
            raise ValueError("set both input_usd_per_million and output_usd_per_million, or neither")
        return self


class TeacherConfig(Section):
    """The teacher: an LLM reached through litellm, or the offline deterministic writer."""

    backend: Literal["litellm", "offline"] = "litellm"
    """``litellm``: any provider litellm supports (OpenAI, Vertex, Anthropic, a self-hosted vLLM
    or ``transformers serve`` endpoint through ``openai/<model>`` + ``api_base``). ``offline``:
    deterministic text from item metadata and histories, marked ``source=offline``."""
    model: str = "openai/gpt-4o-mini"
    """litellm model string (provider/model)."""
    api_base: str | None = None
    """Endpoint URL (self-hosted servers); null: the provider's default."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """NAME of the environment variable holding the API key (a Kubernetes Secret on a cluster);
    null: no key (Vertex ADC, an open local endpoint). The key itself never enters config."""
    temperature: float = Field(0.7, ge=0, le=2)
    """Sampling temperature (a re-request after a rejected output needs a sampled answer)."""
    max_tokens: int = Field(1024, ge=1)
    """Most completion tokens per request."""
    extra_params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """More request parameters passed to litellm (e.g. top_p, seed); part of the cache key."""
    concurrency: int = Field(16, ge=1, le=1024)
    """Requests in flight at once."""
    requests_per_minute: float | None = Field(None, gt=0)
    """Request start rate limit (evenly spaced); null: only ``concurrency`` limits."""
    timeout_s: float = Field(120.0, gt=0)
    """Per-request timeout (a timed-out request is retried)."""
    max_retries: int = Field(6, ge=0, le=50)
    """Retries of one request on 429, 5xx, timeouts, connection errors and malformed responses;
    after that the stage fails (the cache keeps what was done)."""
    backoff_initial_s: float = Field(1.0, gt=0)
    """First back-off delay; doubles per retry, with jitter; a 429's Retry-After is honoured."""
    backoff_max_s: float = Field(60.0, gt=0)
    """Longest back-off delay."""
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    price: PriceConfig = Field(default_factory=PriceConfig)
    cache_lease_s: float = Field(60.0, ge=5)
    """Lifetime of a claim on a request, taken in the response cache before paying for it so that
    concurrent runs sharing the cache never pay twice; renewed every third of it while the request
    is in flight, so a crashed or hung holder's claim is taken over after at most this long. Keep
    it well above the clock difference between the hosts sharing a cache."""

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(f"must be the NAME of an environment variable such as OPENAI_API_KEY, "
                             f"never the key itself (got a value of {len(value)} characters)")
        return value

    @model_validator(mode="after")
    def _backoff(self) -> TeacherConfig:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(f"backoff_initial_s ({self.backoff_initial_s}) must be <= backoff_max_s "
                             f"({self.backoff_max_s})")
        return self


class LengthBounds(Section):
    """Accepted length of one teacher output, in characters."""

    min_chars: int = Field(ge=1)
    max_chars: int = Field(ge=1)

    @model_validator(mode="after")
    def _order(self) -> LengthBounds:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must be <= max_chars ({self.max_chars})")
        return self


class ValidationConfig(Section):
    """Checks every teacher output passes before it enters the corpus."""

    item_analysis: LengthBounds = Field(default_factory=lambda: LengthBounds(min_chars=80, max_chars=6000))
    """Step 1 of item-centric enrichment (the analysis)."""
    item_narrative: LengthBounds = Field(default_factory=lambda: LengthBounds(min_chars=150, max_chars=8000))
    """Step 2 of item-centric enrichment (the paragraph naming the item by its SID)."""
    user_reasoning: LengthBounds = Field(default_factory=lambda: LengthBounds(min_chars=40, max_chars=8000))
    """Step 1 of user-centric enrichment (the reasoning path). Short is allowed: the analysis of
    a one-item history is one sentence and the summary (the offline writer's is about 70
    characters)."""
    user_narrative: LengthBounds = Field(default_factory=lambda: LengthBounds(min_chars=100, max_chars=10000))
    """Step 2 of user-centric enrichment (the integrated narrative)."""
    retries_on_rejection: int = Field(2, ge=0, le=10)
    """New requests after a rejected output; then the entity is dropped (counted by reason)."""


class EnrichmentConfig(Section):
    """How many items and users the teacher enriches, and with which prompt templates."""

    items: int | None = Field(None, ge=0)
    """Items that get an item-centric narrative (a seeded sample of ``tasks.item_scope``);
    null: all, 0: none."""
    users: int | None = Field(None, ge=0)
    """Train samples that get a user-centric reasoning path + narrative (a seeded sample of
    the candidates); null: all candidates, 0: none."""
    user_samples: Literal["latest", "all"] = "latest"
    """Candidates for user-centric enrichment: ``latest`` = each user's last train sample (its
    longest history), ``all`` = every train sample."""
    min_history: int = Field(1, ge=1)
    """Shortest history of a user-centric candidate."""
    reasoning_max_words: int = Field(60, ge=16, le=2000)
    """Longest reasoning path the offline writer (``teacher.backend: offline``) writes, in words,
    a SID counting one word per level (the tokens a model writes for it). The path is the
    model's ``<think>`` part in reasoning activation and the length it learns to think for: keep
    it within what the model can write inside ``evaluate.max_reasoning_tokens`` (the CPU
    profiles' tiny tokenizers spend about 1.6 tokens per word, plus 4 for the think markers). A
    litellm teacher's length follows its prompt template and ``validation.user_reasoning``."""
    interest_kinds: int = Field(1, ge=1, le=3)
    """Kinds the offline writer's closing interest names. 1: the next item's kind and purpose,
    the paper's single interest. 2 or 3: the next item's kind and the likeliest others after the
    history by the train split's kind transitions, in that order, without the purpose ("So next:
    paper or binders."): thinking mode then spreads its SIDs over the kinds its reasoning names
    instead of staking all of them on one guess (README, Results). The user narratives, which end
    with the next item's SID, keep the path that names its kind alone. The litellm teacher's
    interest follows its prompt template."""
    prompt_version: str = Field("v1", pattern=r"^[A-Za-z0-9._-]+$")
    """Version folder of the packaged templates (``components/teacher_corpus/prompts/<v>``)."""
    prompts_uri: str | None = None
    """A folder (local or gs://) with your own templates, replacing the packaged ones."""
    review_samples: int = Field(20, ge=0)
    """Teacher outputs per step logged to MLflow for human review (plus as many rejected ones)."""


class TeacherCorpusConfig(Section):
    """The alignment corpus: deterministic tasks plus teacher-written enrichment."""

    tasks: TasksConfig = Field(default_factory=TasksConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    enrichment: EnrichmentConfig = Field(default_factory=EnrichmentConfig)
    cache_uri: str | None = None
    """Response cache root (local or gs://); null: ``<storage.cache_uri>/teacher_corpus``."""

    @model_validator(mode="after")
    def _offline_interest(self) -> TeacherCorpusConfig:
        if self.enrichment.interest_kinds > 1 and self.teacher.backend != "offline":
            raise ValueError(f"enrichment.interest_kinds {self.enrichment.interest_kinds} is the offline writer's "
                             f"(teacher.backend: offline); the {self.teacher.backend} teacher's interest follows "
                             "its prompt template: leave it at 1")
        return self
