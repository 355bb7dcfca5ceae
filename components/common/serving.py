"""The served model: an MLflow pyfunc that recommends catalog items for interaction histories.

``promote`` packages the run's trained model as this pyfunc when it promotes it (:func:`log_servable`,
into the LoggedModel the training stage created) and registers it; ``mlflow models serve -m
models:/NAME@production --env-manager local`` then answers HTTP requests with it, and the
``recommend`` stage uses the same catalog and ranking code for its batch recommendations.

**Artifacts** (``context.artifacts`` at load time):

* ``model``: the trained ``save_pretrained`` folder;
* ``catalog``: ``catalog.parquet``, one row per sid_map item: item_id, sid, status (active | new |
  retired), title. Histories may name retired items (they keep their SIDs); only live items are
  recommended. Several live items may share a SID in a served catalog (the pipeline's sid_maps
  give each its own): a decoded SID then stands for all of them, in catalog order, at its score;
* ``trie``: ``sid_trie.pt``, the live SIDs under the model's tokenizer (what constrains decoding).

The pyfunc's ``model_config`` is a :class:`~components.common.serving_config.ServingSettings`
(engine, device, dtype, request defaults and limits); a server may override any key of it when it
loads the model (``SERVING_MODEL_CONFIG='{"engine": "vllm"}'`` for ``mlflow models serve``).

**Request.** A DataFrame with ``history`` (list of catalog item ids, oldest first; histories
longer than ``max_history`` keep their most recent items) and optionally ``user_id``; params
``k`` (items per row), ``mode`` (``direct`` | ``thinking``), ``beam_width`` (beams of the SID
search, >= k) and ``max_reasoning_tokens`` (thinking mode). **Response**, per row: ``user_id``,
the ranked ``item_ids`` with their ``titles``, ``scores`` (the SID's summed token
log-probability) and ``sids``, and in thinking mode ``reasoning``, ``reasoning_closed`` and
``reasoning_tokens``. Always exactly ``k`` items.

**Errors.** A request the model cannot answer as asked (unknown or empty history, a value of the
wrong type, k above the beam, too many rows...) raises :class:`RequestError` naming the row and
field, which ``predict`` turns into ``MlflowException(INVALID_PARAMETER_VALUE)``: the scoring
server answers HTTP 400 with the message and no traceback. A failure of the model itself is an
``INTERNAL_ERROR`` (HTTP 500) with its message; the traceback goes to the server's log.

**Decoding** is :mod:`components.common.decoding` (the evaluation's decoders): transformers on a
CPU or GPU, vLLM on a GPU (``engine``), the same prompts and trie-constrained beam search.
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from components.common import sid as sid_codec
from components.common import storage
from components.common.artifacts import STATUSES, Catalog, Samples
from components.common.config import parse_section
from components.common.decoding_config import Mode
from components.common.lineage import _mlflow
from components.common.serving_config import ServingSettings

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.parquet"
TRIE_FILE = "sid_trie.pt"
CATALOG_SCHEMA = pa.schema([("item_id", pa.string()), ("sid", pa.string()), ("status", pa.string()),
                            ("title", pa.string())])
MODES: tuple[Mode, ...] = ("direct", "thinking")
REQUEST_COLUMNS = ("history", "user_id")
RESPONSE_COLUMNS = ("user_id", "item_ids", "titles", "scores", "sids", "reasoning", "reasoning_closed",
                    "reasoning_tokens")
#: Distributions the pyfunc imports, pinned to the versions that logged it (``requirements.txt``
#: of the logged model). The code itself, ``components.common.serving``, comes with the serving
#: image (README "Serving"), as torch does.
SERVING_DISTRIBUTIONS = ("mlflow", "torch", "transformers", "accelerate", "numpy", "pandas", "pyarrow", "pydantic")


class RequestError(ValueError):
    """A request the model cannot answer as asked; the message names the row and field."""


# ----------------------------------------------------------------------------------------------
# The served catalog
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    """One row's ranked items, best first, with what the decoder said about each."""

    item_ids: list[str]
    titles: list[str]
    scores: list[float]
    sids: list[str]


class ServedCatalog:
    """What the served model knows of the catalog: every item's SID, and for each live SID the
    live items it stands for (catalog order) with their titles."""

    def __init__(self, item_ids: Sequence[str], sids: Sequence[str], statuses: Sequence[str],
                 titles: Sequence[str | None], where: str = "catalog"):
        self.sid_of: dict[str, str] = {}
        self.status_of: dict[str, str] = {}
        self.title_of: dict[str, str] = {}
        items_of: dict[str, list[str]] = {}
        levels = set()
        for row, (item, sid, status, title) in enumerate(zip(item_ids, sids, statuses, titles, strict=True)):
            if not isinstance(item, str) or not item.strip():
                raise ValueError(f"{where} row {row}: item_id must be a non-empty string (got {item!r})")
            if item in self.sid_of:
                raise ValueError(f"{where} row {row}: item {item!r} is listed twice")
            if status not in STATUSES:
                raise ValueError(f"{where} row {row} (item {item!r}): status {status!r} is not one of {list(STATUSES)}")
            try:
                levels.add(len(sid_codec.parse_sid(sid)))
            except sid_codec.SidError as exc:
                raise ValueError(f"{where} row {row} (item {item!r}): {exc}") from None
            self.sid_of[item], self.status_of[item] = sid, status
            if status != "retired":
                self.title_of[item] = title if isinstance(title, str) and title.strip() else f"(item {item})"
                items_of.setdefault(sid, []).append(item)
        if len(levels) > 1:
            raise ValueError(f"{where}: SIDs of different lengths {sorted(levels)}")
        if not items_of:
            raise ValueError(f"{where}: no live (active or new) item to recommend")
        self.items_of = {sid: tuple(items) for sid, items in items_of.items()}
        self.sids = tuple(self.items_of)
        """Distinct live SIDs, in catalog order: the trie's leaves."""

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> ServedCatalog:
        """The served form of a pipeline catalog (a sid_map read with its items' titles)."""
        items = list(catalog.sid_of)
        return cls(items, [catalog.sid_of[i] for i in items],
                   ["retired" if i in catalog.retired else "active" for i in items],
                   [catalog.items[i].title if i in catalog.items else None for i in items])

    @classmethod
    def read(cls, path: str | Path) -> ServedCatalog:
        table = storage.read_parquet(path)
        missing = [name for name in CATALOG_SCHEMA.names if name not in table.column_names]
        if missing:
            raise ValueError(f"served catalog {path}: missing column(s) {missing}")
        columns = table.select(CATALOG_SCHEMA.names).to_pydict()
        return cls(columns["item_id"], columns["sid"], columns["status"], columns["title"],
                   where=f"served catalog {path}")

    def table(self) -> pa.Table:
        items = list(self.sid_of)
        return pa.table({"item_id": items, "sid": [self.sid_of[i] for i in items],
                         "status": [self.status_of[i] for i in items],
                         "title": [self.title_of.get(i) for i in items]}, schema=CATALOG_SCHEMA)

    @property
    def live_items(self) -> int:
        return len(self.title_of)

    def history_sids(self, history: Sequence[str], where: str) -> list[str]:
        """The SIDs of a history's items (retired ones included); unknown items are an error."""
        unknown = [item for item in history if item not in self.sid_of]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise RequestError(f"{where}: {len(unknown)} item id(s) not in the catalog: {shown}")
        return [self.sid_of[item] for item in history]

    def ranked(self, sids: Sequence[str], scores: Sequence[float], k: int) -> Recommendation:
        """The ``k`` best items of a row's decoded SIDs (best first): each SID's live items at its score."""
        items, titles, item_scores, item_sids = [], [], [], []
        for sid, score in zip(sids, scores):
            for item in self.items_of[sid]:
                items.append(item)
                titles.append(self.title_of[item])
                item_scores.append(float(score))
                item_sids.append(sid)
        if len(items) < k:  # beam_width >= k and the catalog has >= beam_width SIDs: never
            raise RuntimeError(f"the decoder returned {len(sids)} SID(s) standing for {len(items)} item(s), "
                               f"fewer than k={k}")
        return Recommendation(items[:k], titles[:k], item_scores[:k], item_sids[:k])


# ----------------------------------------------------------------------------------------------
# Histories as the model is asked about them
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserHistory:
    user_id: str
    history: list[str]
    """Item ids, oldest first."""
    last_timestamp: int


def trained_history_length(samples: Samples) -> int:
    """The longest history of the samples: what the model was trained and evaluated on."""
    return max(len(s.history) for s in samples.rows)


def current_histories(samples: Samples, max_history: int) -> list[UserHistory]:
    """Each user's history as of their last interaction (their latest sample's history and
    target), cut to the ``max_history`` most recent items; the most recently active users first."""
    latest = {}
    for sample in samples.rows:
        seen = latest.get(sample.user_id)
        if seen is None or (sample.timestamp, sample.row) > (seen.timestamp, seen.row):
            latest[sample.user_id] = sample
    users = [UserHistory(user, [*s.history, s.target][-max_history:], s.timestamp) for user, s in latest.items()]
    return sorted(users, key=lambda u: (-u.last_timestamp, u.user_id))


# ----------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A validated request: one history (and SIDs) per row, and the decoding it asks for."""

    user_ids: list[str | None]
    histories: list[list[str]]
    sids: list[list[str]]
    k: int
    mode: Mode
    beam_width: int
    max_reasoning_tokens: int


def _int_param(params: Mapping[str, Any], name: str, default: int, low: int, high: int, why: str) -> int:
    value = params.get(name)
    if value is None:
        value = default
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise RequestError(f"param {name}: must be an integer (got {value!r})")
    if not low <= value <= high:
        raise RequestError(f"param {name}: {value} is outside [{low}, {high}] ({why})")
    return int(value)


def request_params(params: Mapping[str, Any] | None, settings: ServingSettings,
                   catalog: ServedCatalog) -> tuple[int, Mode, int, int]:
    """(k, mode, beam_width, max_reasoning_tokens) of a request, each checked."""
    params = dict(params or {})
    unknown = sorted(set(params) - {"k", "mode", "beam_width", "max_reasoning_tokens"})
    if unknown:
        raise RequestError(f"param(s) {unknown}: unknown; the model takes k, mode, beam_width, max_reasoning_tokens")
    mode = params.get("mode") or settings.default_mode
    if mode not in MODES:
        raise RequestError(f"param mode: must be one of {list(MODES)} (got {mode!r})")
    widest = min(settings.max_beam_width, len(catalog.sids))
    beam_width = _int_param(params, "beam_width", min(settings.beam_width, widest), 1, widest,
                            f"the model decodes at most {settings.max_beam_width} beams over {len(catalog.sids)} "
                            "catalog SIDs")
    k = _int_param(params, "k", min(settings.default_k, beam_width), 1, beam_width,
                   f"k larger than the beam: a ranked list has at most beam_width={beam_width} SIDs")
    tokens = _int_param(params, "max_reasoning_tokens", settings.max_reasoning_tokens, 1,
                        settings.reasoning_token_limit, "the model's reasoning_token_limit")
    return k, mode, beam_width, tokens


def _history(value: Any, where: str) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)):
        raise RequestError(f"{where}: must be a list of item ids (got {type(value).__name__} {value!r:.80})")
    items = list(value)
    if not items:
        raise RequestError(f"{where}: empty history; the model needs at least one item")
    bad = [item for item in items if not isinstance(item, str) or not item.strip()]
    if bad:
        raise RequestError(f"{where}: item ids must be non-empty strings (got {bad[0]!r})")
    return items


def parse_request(frame: Any, params: Mapping[str, Any] | None, catalog: ServedCatalog,
                  settings: ServingSettings) -> Request:
    """Check a request against the catalog and the settings; :class:`RequestError` names the field."""
    if not isinstance(frame, pd.DataFrame):
        raise RequestError(f"the input must be a table with columns {list(REQUEST_COLUMNS)} "
                           f"(got {type(frame).__name__})")
    unknown = [c for c in frame.columns if c not in REQUEST_COLUMNS]
    if unknown or "history" not in frame.columns:
        raise RequestError(f"columns: expected history and optionally user_id (got {list(frame.columns)})")
    if len(frame) == 0:
        raise RequestError("history: the request has no rows")
    if len(frame) > settings.max_rows:
        raise RequestError(f"history: {len(frame)} rows, more than the {settings.max_rows} one request may hold")
    k, mode, beam_width, tokens = request_params(params, settings, catalog)
    histories, sids, users = [], [], []
    cut = settings.max_history
    for row, value in enumerate(frame["history"]):
        history = _history(value, f"history[{row}]")[-cut if cut else None:]
        sids.append(catalog.history_sids(history, f"history[{row}]"))
        histories.append(history)
    for row, user in enumerate(frame["user_id"] if "user_id" in frame.columns else [None] * len(frame)):
        if user is not None and not (isinstance(user, float) and np.isnan(user)) and not isinstance(user, str):
            raise RequestError(f"user_id[{row}]: must be a string (got {user!r})")
        users.append(user if isinstance(user, str) else None)
    return Request(users, histories, sids, k, mode, beam_width, tokens)


def response_rows(user_ids: Iterable[str | None], decoded: Iterable[Any], catalog: ServedCatalog,
                  k: int) -> list[dict[str, Any]]:
    """One response row per decoded history (:class:`~components.common.decoding.Decoded`)."""
    rows = []
    for user, result in zip(user_ids, decoded, strict=True):
        ranked = catalog.ranked(result.sids, result.scores, k)
        rows.append({"user_id": user, "item_ids": ranked.item_ids, "titles": ranked.titles,
                     "scores": ranked.scores, "sids": ranked.sids, "reasoning": result.reasoning,
                     "reasoning_closed": result.reasoning_closed, "reasoning_tokens": result.reasoning_tokens})
    return rows


# ----------------------------------------------------------------------------------------------
# The pyfunc
# ----------------------------------------------------------------------------------------------


def load_decoder(model_dir: str, catalog: ServedCatalog, settings: ServingSettings, trie: Any,
                 workdir: Path | None) -> Any:
    """The shared decoder of ``settings.engine`` over the catalog's SIDs, constrained by ``trie``
    (``workdir``: the vLLM engine's scratch folder; transformers needs none)."""
    from components.common.decoding import TransformersDecoder, VllmDecoder, resolve_device

    if settings.engine == "vllm":  # one engine for every request: sized for the widest beam
        wide = settings.model_copy(update={"beam_width": settings.max_beam_width})
        return VllmDecoder(model_dir, catalog.sids, wide, workdir, settings.seed, trie=trie)
    return TransformersDecoder(model_dir, catalog.sids, settings, resolve_device(settings, 0), trie=trie)


class SidRecommender(_mlflow().pyfunc.PythonModel):
    """The pyfunc (see the module docstring). Requests are decoded one at a time: the scoring
    server runs ``predict`` in threads, and one model instance batches within a request."""

    # Requests are validated by the logged signature (columns, types, params), not by type hints
    # on ``predict``, which would change how the scoring server parses a request body.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from components.common.constrained import SidTrie

        self.settings = parse_section(ServingSettings, dict(context.model_config or {}), "model_config")
        self.catalog = ServedCatalog.read(context.artifacts["catalog"])
        trie = SidTrie.load(context.artifacts["trie"])
        if sorted(trie.labels) != sorted(self.catalog.sids):
            raise ValueError(f"trie {context.artifacts['trie']} holds {trie.num_sequences} SIDs that are not the "
                             f"catalog's {len(self.catalog.sids)} live SIDs: the artifacts are not of one model")
        # only vLLM writes scratch files; a folder for transformers would outlive a killed server
        self._workdir = (tempfile.TemporaryDirectory(prefix="sidreasoner-serving-")
                         if self.settings.engine == "vllm" else None)
        self.decoder = load_decoder(context.artifacts["model"], self.catalog, self.settings, trie,
                                    Path(self._workdir.name) if self._workdir else None)
        self._lock = threading.Lock()
        log.info("serving: %d live items (%d SIDs), engine %s, default k %d, mode %s", self.catalog.live_items,
                 len(self.catalog.sids), self.settings.engine, self.settings.default_k, self.settings.default_mode)

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

        try:
            request = parse_request(model_input, params, self.catalog, self.settings)
        except RequestError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        try:
            return pd.DataFrame(self.recommend(request), columns=list(RESPONSE_COLUMNS))
        except Exception as exc:
            log.exception("serving: decoding failed")
            raise MlflowException(f"the model failed to answer: {exc}", error_code=INTERNAL_ERROR) from None

    def recommend(self, request: Request) -> list[dict[str, Any]]:
        from components.common.decoding import decode_mode

        decoder = copy.copy(self.decoder)  # this request's beam and reasoning budget; the weights are shared
        decoder.settings = self.decoder.settings.model_copy(update={
            "beam_width": request.beam_width, "max_reasoning_tokens": request.max_reasoning_tokens})
        with self._lock:
            decoded = decode_mode(decoder, request.sids, request.mode)
        return response_rows(request.user_ids, decoded, self.catalog, request.k)


# ----------------------------------------------------------------------------------------------
# Packaging (promote; benchmarks and tests)
# ----------------------------------------------------------------------------------------------


def signature(settings: ServingSettings) -> Any:
    """Request columns, response columns and the request params with their defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(Array(DataType.string), "history"), ColSpec(DataType.string, "user_id", required=False)])
    outputs = Schema([
        ColSpec(DataType.string, "user_id", required=False), ColSpec(Array(DataType.string), "item_ids"),
        ColSpec(Array(DataType.string), "titles"), ColSpec(Array(DataType.double), "scores"),
        ColSpec(Array(DataType.string), "sids"), ColSpec(DataType.string, "reasoning", required=False),
        ColSpec(DataType.boolean, "reasoning_closed", required=False),
        ColSpec(DataType.long, "reasoning_tokens", required=False)])
    params = ParamSchema([
        ParamSpec("k", DataType.long, settings.default_k), ParamSpec("mode", DataType.string, settings.default_mode),
        ParamSpec("beam_width", DataType.long, settings.beam_width),
        ParamSpec("max_reasoning_tokens", DataType.long, settings.max_reasoning_tokens)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def requirements() -> list[str]:
    """``name==version`` of :data:`SERVING_DISTRIBUTIONS` as installed (local labels dropped:
    ``torch==2.13.0``, whichever build the serving image has)."""
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in SERVING_DISTRIBUTIONS]


def _pyfunc_arguments(model_dir: Path, catalog: ServedCatalog, settings: ServingSettings,
                      example: UserHistory, workdir: Path, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What ``mlflow.pyfunc.log_model`` and ``save_model`` take for this model; the catalog and
    trie artifacts are written into ``workdir``."""
    from transformers import AutoTokenizer

    from components.common.constrained import SidTrie

    catalog_path, trie_path = workdir / CATALOG_FILE, workdir / TRIE_FILE
    storage.write_parquet(catalog.table(), catalog_path)
    SidTrie.from_tokenizer(AutoTokenizer.from_pretrained(model_dir), catalog.sids).save(trie_path)
    frame = pd.DataFrame({"user_id": [example.user_id], "history": [example.history]})
    return {"python_model": SidRecommender(),
            "artifacts": {"model": str(model_dir), "catalog": str(catalog_path), "trie": str(trie_path)},
            "signature": signature(settings), "input_example": (frame, {"k": settings.default_k}),
            "model_config": settings.model_dump(mode="json"), "pip_requirements": requirements(),
            "metadata": {"sidreasoner": {"python_model": f"{__name__}.SidRecommender", **metadata}}}


def log_servable(*, model_dir: Path, catalog: ServedCatalog, settings: ServingSettings, example: UserHistory,
                 metadata: Mapping[str, Any], model_id: str | None = None, name: str = "model") -> Any:
    """Log the pyfunc to the active MLflow run; into the LoggedModel ``model_id`` when given (the
    training stage's, which then holds the servable model), else a new one. Returns the ModelInfo."""
    mlflow = _mlflow()
    with tempfile.TemporaryDirectory(prefix="sidreasoner-servable-") as workdir:
        arguments = _pyfunc_arguments(model_dir, catalog, settings, example, Path(workdir), metadata)
        # MLflow answers the input example with the local copy before uploading it, but only warns
        # when that fails: check_servable is the strict check, on the logged copy
        return mlflow.pyfunc.log_model(name=name, model_id=model_id, **arguments)


def save_servable(path: Path, *, model_dir: Path, catalog: ServedCatalog, settings: ServingSettings,
                  example: UserHistory, metadata: Mapping[str, Any]) -> Path:
    """Write the pyfunc to a local folder (``mlflow models serve -m PATH`` serves it)."""
    mlflow = _mlflow()
    with tempfile.TemporaryDirectory(prefix="sidreasoner-servable-") as workdir:
        arguments = _pyfunc_arguments(model_dir, catalog, settings, example, Path(workdir), metadata)
        mlflow.pyfunc.save_model(str(path), **arguments)
    return path


def check_servable(model_uri: str) -> pd.DataFrame:
    """Load a logged pyfunc back (transformers on the CPU, whatever engine it serves with) and
    answer its own input example: it must return ``k`` items per row. Returns the answer."""
    mlflow = _mlflow()
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="sidreasoner-check-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        model = mlflow.pyfunc.load_model(local, model_config={"engine": "transformers", "device": "cpu"})
        meta = Model.load(local)
        frame, params = meta.load_input_example(local), meta.load_input_example_params(local) or {}
        answer = model.predict(frame, params=params)
    k = params.get("k")
    short = [row for row, items in enumerate(answer["item_ids"]) if len(items) != k]
    if len(answer) != len(frame) or short:
        raise RuntimeError(f"{model_uri}: its input example got {len(answer)} row(s) for {len(frame)}, and rows "
                           f"{short} without k={k} items")
    return answer
