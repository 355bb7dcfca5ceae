"""Faults around the stages, one row each: a teacher that refuses, fails, stalls, overcharges or
echoes its key; storage that is full, read-only, unreachable or half-written; runs that share
a cache or an output folder; a stage killed mid-training. Case classes:

* ``teacher fault``: the teacher refuses the key, keeps failing, is unreachable, or the budget
  stops the run -- a clear failure, every answer received kept in the cache;
* ``teacher recovered``: 429s, timeouts and malformed answers are retried, nothing is paid
  twice, and what may have been billed is counted;
* ``secret``: a key echoed by the teacher never reaches an output, the cache or MLflow;
* ``storage``: a full disk, a read-only folder, a dead GCS connection, a missing or
  half-uploaded object -- a message naming the URI and nothing half-written;
* ``interrupted publish``: an input from a publish that was cut short, or changed afterwards;
* ``concurrent runs``: two runs sharing a teacher cache, or one output folder;
* ``killed and resumed``: grpo killed (SIGKILL) after a checkpoint, then run again: it resumes,
  publishes whole outputs, and closes the killed attempt's MLflow run (align_sft's and the
  teacher's kill and resume are tests/training/test_resume.py and tests/teacher_corpus);
* ``pipeline run``: ``sidreasoner run`` reports the failed stage's own message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.common import publish, storage
from components.common.config import ConfigError
from components.common.storage import StorageError
from components.teacher_corpus.stage import BudgetStop
from components.teacher_corpus.teacher import TeacherError
from tests.faults import FaultyProxy
from tests.filesystems import full_disk, unwritable
from tests.ingest.helpers import amazon18_files
from tests.reliability import inputs as ins
from tests.reliability.harness import REPO, TRACEBACK, Case, StageCall, check, write_profile
from tests.reliability.inputs import CPU, stage_call
from tests.teacher_corpus.helpers import API_KEY, API_KEY_ENV, teacher_section

TEACHER_FAULT = "teacher fault"
TEACHER_RECOVERED = "teacher recovered"
SECRET_ROW = "secret"
STORAGE = "storage"
INTERRUPTED = "interrupted publish"
CONCURRENT = "concurrent runs"
KILLED = "killed and resumed"
PIPELINE = "pipeline run"

TEACHER = ("teacher",)
ENRICH = {"users": 2, "items": 2}  # 8 teacher requests: two steps for each item and user


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def litellm_corpus(faults=(), respond=None, **teacher_overrides):
    """teacher_corpus against the row's local teacher, after queueing ``faults`` on it."""
    def build(root: Path, teacher) -> StageCall:
        for fault, count, options in faults:
            teacher.inject(fault, count=count, **options)
        if respond is not None:
            teacher.respond = respond
        paths = ins.catalog(root)
        section = {"teacher": teacher_section(teacher.url, **teacher_overrides), "enrichment": ENRICH}
        return stage_call(root, "teacher_corpus", section, {k: paths[k] for k in ("items", "samples", "sid_map")})
    return build


def echo_the_key(messages):
    from tests.teacher_server import echo_sids

    return f"{echo_sids(messages)} Served for {API_KEY}."


def possibly_billed(expected: int):
    def then(call: StageCall, outcome, **_):
        stats = json.loads((call.out / "stats.json").read_text())
        assert stats["teacher"]["possibly_billed"]["requests"] == expected
        assert stats["teacher"]["retries"]["timeout"] == expected
    return then


def ingest(out=None, sets=()):
    """ingest of a small valid amazon18 catalog, writing to ``out(root)`` (default ROOT/out)."""
    def build(root: Path) -> StageCall:
        amazon18_files(root / "in")
        config = write_profile(root / "profile.yaml", {"ingest": {"format": "amazon18", "source": str(root / "in")}})
        return StageCall("ingest", config, out(root) if out else root / "out", sets)
    return build


def ingest_to_a_full_disk(root: Path) -> StageCall:
    call = ingest()(root)
    disk = root / "out"
    _enter(root, full_disk(disk, "4k"))
    (disk / "filler").write_bytes(b"x" * 4096)  # not one page left
    return call


def ingest_to_a_read_only_folder(root: Path) -> StageCall:
    call = ingest()(root)
    _enter(root, unwritable(root / "out"))
    return call


_CONTEXTS: dict[Path, list] = {}


def _enter(root: Path, manager) -> None:
    """Keep a context (a mount) open for the row; ``leave`` closes it once the row is checked."""
    manager.__enter__()
    _CONTEXTS.setdefault(root, []).append(manager)


@pytest.fixture(autouse=True)
def leave(tmp_path):
    yield
    for manager in reversed(_CONTEXTS.pop(tmp_path, [])):
        manager.__exit__(None, None, None)


def sid_quantize_from_dead_gcs(root: Path, dead_gcs) -> StageCall:
    paths = ins.catalog(root)
    uri = f"{dead_gcs.bucket}/catalog/items.parquet"
    storage.copy(paths["items"], uri)
    dead_gcs.kill()  # the connection dies after the upload
    return stage_call(root, "sid_quantize", {"codebook_sizes": [4, 4]}, {"items": uri},
                      sets=("storage.gcs_retry_deadline_s=2",))


def sid_quantize_from_absent_gcs_object(root: Path, gcs_bucket: str) -> StageCall:
    return stage_call(root, "sid_quantize", {"codebook_sizes": [4, 4]},
                      {"items": f"{gcs_bucket}/catalog/absent/items.parquet"})


def reason_sft_from_half_uploaded_model(root: Path, gcs_bucket: str, tiny_model: Path) -> StageCall:
    paths = ins.catalog(root)
    uri = f"{gcs_bucket}/models/align"
    for path in tiny_model.iterdir():  # every file, but the upload died before the manifest
        if path.is_file():
            storage.upload_file(path, f"{uri}/{path.name}")
    return stage_call(root, "reason_sft", {**CPU, "max_steps": 1, "eval_fraction": 0, "eval_strategy": "no",
                                           "early_stopping_patience": None},
                      {"sft_model": uri, "reasoning": paths["reasoning"], "sid_map": paths["sid_map"]})


def teacher_corpus_with_cache_on(make_unwritable: bool):
    def build(root: Path, teacher) -> StageCall:
        call = litellm_corpus()(root, teacher)
        if make_unwritable:
            _enter(root, unwritable(root / "cache"))
        return call
    return build


def published_by_ingest(state: str, change_after: bool = False):
    """teacher_corpus reading samples that ingest published (``state`` of its record)."""
    def build(root: Path) -> StageCall:
        paths = ins.catalog(root)
        folder = Path(paths["samples"]).parent
        digests = {"items": storage.digest(paths["items"]), "samples": storage.digest(paths["samples"])}
        storage.write_json(publish.record_uri(str(folder), "ingest"), {
            "stage": "ingest", "run_key": "cli-ingest-x", "state": state,
            "outputs": {name: {"file": f"{name}.parquet", "digest": digest} for name, digest in digests.items()}})
        if change_after:
            ins.rewrite_table(paths["samples"], ins.rows(keep=lambda r: r["user_id"] != "U0"))
        return stage_call(root, "teacher_corpus", {"teacher": {"backend": "offline"}, "enrichment": ENRICH},
                          {k: paths[k] for k in ("items", "samples", "sid_map")})
    return build


def _background(call: StageCall, out: Path, tracking_uri: str, extra_env: dict[str, str] | None = None):
    """The same stage, started as another process writing to ``out``."""
    env = {**os.environ, **(extra_env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    argv = [sys.executable, "-m", f"components.{call.stage}", "--config", str(call.config), "--out", str(out),
            "--tracking-uri", tracking_uri]
    for item in call.sets:
        argv += ["--set", item]
    for name, uri in call.inputs.items():
        argv += [f"--{name.replace('_', '-')}", uri]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


_OTHERS: dict[Path, subprocess.Popen] = {}


def two_corpus_runs_sharing_a_cache(root: Path, teacher) -> StageCall:
    teacher.latency = 0.2
    call = litellm_corpus()(root, teacher)
    _OTHERS[root] = _background(call, root / "other-out", f"sqlite:///{root / 'other.db'}",
                                {API_KEY_ENV: API_KEY})
    return call


def the_other_run_succeeded(call: StageCall, outcome, **_):
    other = _OTHERS.pop(call.out.parent)
    _, err = other.communicate(timeout=300)
    assert other.returncode == 0, err[-3000:]
    assert API_KEY not in err


def two_ingest_runs_into_one_folder(root: Path) -> StageCall:
    call = ingest()(root)
    _OTHERS[root] = _background(call, call.out, f"sqlite:///{root / 'other.db'}")
    return call


def one_complete_set(call: StageCall, outcome, **_):
    the_other_run_succeeded(call, outcome)
    record = json.loads((call.out / "_PUBLISH.ingest.json").read_text())
    for name, entry in record["outputs"].items():  # whichever run published last, its set is whole
        assert storage.digest(call.out / entry["file"]) == entry["digest"], name


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

TABLE: list[Case] = [
    # -- teacher fault -----------------------------------------------------------------------
    Case("teacher-refuses-the-key", TEACHER_FAULT, litellm_corpus(faults=[("401", 20, {})]), uses=TEACHER,
         names="the teacher refused the API key from $TEACHER_TEST_API_KEY (HTTP 401)", error=TeacherError),
    Case("teacher-server-errors-outlast-the-retries", TEACHER_FAULT,
         litellm_corpus(faults=[("500", 100, {})], max_retries=1, concurrency=1), uses=TEACHER,
         names="teacher request failed after 2 attempts (last: server_error", error=TeacherError),
    Case("teacher-unreachable", TEACHER_FAULT, lambda root, teacher: litellm_corpus(
        max_retries=1, api_base="http://127.0.0.1:9/v1")(root, teacher), uses=TEACHER,
         names="teacher request failed after 2 attempts", says=("Connection error",), error=TeacherError),
    Case("teacher-budget-stops-the-run", TEACHER_FAULT,
         litellm_corpus(budget={"max_requests": 3, "on_exhausted": "fail"}, concurrency=1), uses=TEACHER,
         names="teacher budget reached (max_requests=3", says=("re-run with a larger budget",), error=BudgetStop),
    Case("teacher-cost-budget-without-a-price", TEACHER_FAULT, litellm_corpus(budget={"max_cost_usd": 1.0}),
         uses=TEACHER, names="teacher.budget.max_cost_usd is set but the price of 'openai/teacher' is unknown",
         error=TeacherError),

    # -- teacher recovered -------------------------------------------------------------------
    Case("teacher-rate-limits", TEACHER_RECOVERED, litellm_corpus(faults=[("429", 3, {"retry_after": 0.05})]),
         uses=TEACHER, names="", recovers=True),
    Case("teacher-timeouts-counted-as-possibly-billed", TEACHER_RECOVERED,
         litellm_corpus(faults=[("slow", 2, {"delay": 3.0})], timeout_s=1.0, concurrency=1), uses=TEACHER,
         names="", recovers=True, then=possibly_billed(2)),
    Case("teacher-malformed-answers", TEACHER_RECOVERED,
         litellm_corpus(faults=[("malformed", 2, {}), ("empty", 1, {})]), uses=TEACHER, names="", recovers=True),

    # -- secret ------------------------------------------------------------------------------
    Case("teacher-echoes-the-key", SECRET_ROW, litellm_corpus(respond=echo_the_key), uses=TEACHER, names="",
         recovers=True),

    # -- storage -----------------------------------------------------------------------------
    Case("storage-full-disk", STORAGE, ingest_to_a_full_disk, names="cannot write the outputs of ingest to ",
         says=("out: no space left on device",), error=StorageError, keeps=("filler",)),
    Case("storage-read-only-output-folder", STORAGE, ingest_to_a_read_only_folder,
         names="cannot write the outputs of ingest to ", error=StorageError),
    Case("storage-dead-gcs-connection", STORAGE, sid_quantize_from_dead_gcs, uses=("dead_gcs",),
         names="/catalog/items.parquet: gave up after retrying for 2s", error=StorageError),
    Case("storage-gcs-input-absent", STORAGE, sid_quantize_from_absent_gcs_object, uses=("gcs_bucket",),
         names="input items: gs://", says=("/catalog/absent/items.parquet does not exist",)),
    Case("storage-gcs-model-half-uploaded", STORAGE, reason_sft_from_half_uploaded_model,
         uses=("gcs_bucket", "tiny_model"), names="input sft_model: gs://",
         says=("/models/align does not exist (or is not a complete model artifact)",)),
    Case("storage-teacher-cache-read-only", STORAGE, teacher_corpus_with_cache_on(make_unwritable=True),
         uses=TEACHER, names="/cache/teacher_corpus/", error=StorageError),

    # -- interrupted publish -----------------------------------------------------------------
    Case("publish-interrupted-upstream", INTERRUPTED, published_by_ingest("publishing"),
         names="input items: ", says=("belongs to an interrupted publish of ingest", "run ingest again")),
    Case("publish-output-changed-afterwards", INTERRUPTED, published_by_ingest("complete", change_after=True),
         names="input samples: ", says=("samples.parquet changed after ingest published it",)),

    # -- concurrent runs ---------------------------------------------------------------------
    Case("concurrent-corpus-runs-share-a-cache", CONCURRENT, two_corpus_runs_sharing_a_cache, uses=TEACHER,
         names="", recovers=True, then=the_other_run_succeeded),
    Case("concurrent-ingest-runs-into-one-folder", CONCURRENT, two_ingest_runs_into_one_folder, names="",
         recovers=True, then=one_complete_set),

]


@dataclass
class DeadGcs:
    bucket: str
    kill: Callable[[], None]
    """From now on, every request of this process fails (503)."""


@pytest.fixture
def dead_gcs(gcs_bucket, monkeypatch):
    """A bucket, and a way to kill the connection to it (a proxy answering 503 to everything)."""
    with FaultyProxy(os.environ["STORAGE_EMULATOR_HOST"], fail_first=10**9, status=503) as proxy:
        def kill() -> None:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
            storage.gcs_client.cache_clear()
        try:
            yield DeadGcs(gcs_bucket, kill)
        finally:
            storage.configure()
            storage.gcs_client.cache_clear()


def test_the_table_covers_every_class():
    assert len({case.id for case in TABLE}) == len(TABLE)
    assert {case.kind for case in TABLE} == {TEACHER_FAULT, TEACHER_RECOVERED, SECRET_ROW, STORAGE, INTERRUPTED,
                                            CONCURRENT}


@pytest.mark.parametrize("case", [case.param() for case in TABLE])
def test_fault_is_handled(case, tmp_path, tracking_uri, capsys, request):
    check(case, tmp_path, tracking_uri, capsys, request)


# ----------------------------------------------------------------------------------------------
# Killed and resumed: a training stage killed (SIGKILL) after its first checkpoint
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Killed:
    """A row of the ``killed and resumed`` class: the stage's command, killed, then run again."""

    id: str
    stage: str
    section: dict
    inputs: Callable[[dict[str, str]], dict[str, str]]
    max_steps: int

    def param(self):
        return pytest.param(self, id=self.id)


KILLED_TABLE = [
    Killed("grpo-killed-after-a-checkpoint", "grpo",
           {**CPU, "max_steps": 6, "num_generations": 2, "per_device_batch_size": 2, "rollout_batch_size": 2,
            "rollout": {"max_completion_length": 8, "max_prompt_length": 1024}, "validation": {"every_steps": None}},
           lambda p: {"reasoning_model": p["model"], "reasoning": p["reasoning"], "sid_map": p["sid_map"]}, 6),
]


def _mlflow_runs(tracking_uri: str, stage: str) -> dict[str, str]:
    """pid -> status of every MLflow run of ``stage`` in the store."""
    from components.common import lineage

    client = lineage._mlflow().MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("sidreasoner")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{lineage.TAG_STAGE}` = '{stage}'")
    return {run.data.tags.get(lineage.TAG_PID): run.info.status for run in runs}


@pytest.mark.parametrize("row", [row.param() for row in KILLED_TABLE])
def test_killed_stage_resumes_and_publishes_whole_outputs(row, tmp_path, tiny_model):
    from components.common.training import checkpoints as published

    paths = ins.catalog(tmp_path)
    paths["model"] = ins.model(tmp_path / "in" / "model", tiny_model)
    checkpoints = str(tmp_path / "checkpoints")
    call = stage_call(tmp_path, row.stage, {**row.section, "checkpoint": {
        "every_steps": 2, "keep": 2, "uri": checkpoints, "local_dir": str(tmp_path / "scratch")}}, row.inputs(paths))
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", f"components.{row.stage}", *call.argv(tracking_uri)]
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not published.complete(checkpoints):
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint published"
                time.sleep(0.05)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    saved = published.complete(checkpoints)
    assert saved and saved[-1] < row.max_steps
    assert [p.name for p in call.out.iterdir() if not p.name.startswith(".staging-")] == []  # nothing published
    assert _mlflow_runs(tracking_uri, row.stage) == {str(first.pid): "RUNNING"}

    second = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert TRACEBACK not in second.stderr
    assert f"resuming from checkpoint {saved[-1]} of {checkpoints}" in second.stderr
    stats = json.loads((call.out / "stats.json").read_text())
    assert stats["resumed_from_step"] == saved[-1] and stats["global_step"] == row.max_steps
    record = json.loads((call.out / f"_PUBLISH.{row.stage}.json").read_text())
    assert record["state"] == "complete" and storage.digest(call.out / "model") == record["outputs"]["model"]["digest"]
    assert sorted(p.name for p in call.out.iterdir()) == [f"_PUBLISH.{row.stage}.json", "model", "stats.json"]
    runs = _mlflow_runs(tracking_uri, row.stage)
    assert runs[str(first.pid)] == "FAILED" and sorted(runs.values()) == ["FAILED", "FINISHED"]


# ----------------------------------------------------------------------------------------------
# Pipeline run: `sidreasoner run` reports the failed stage's own message
# ----------------------------------------------------------------------------------------------


def test_a_failed_pipeline_run_records_the_stages_message(tmp_path):
    source = amazon18_files(tmp_path / "src")
    reviews = source / "reviews.json.gz"
    reviews.write_bytes(reviews.read_bytes()[:-20])  # truncated
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", "demo", "--out",
                           str(tmp_path / "run"), "--set", f"ingest.source={source}",
                           "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],  # not the repo's build/
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    expected = f"{reviews}: truncated or corrupt gzip data after line"
    assert proc.returncode == 1 and TRACEBACK not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: stage ingest failed: {expected}")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["failed_stage"] == "ingest"
    assert record["error"].startswith(expected) and "\x1b" not in record["error"]
    task = next((tmp_path / "run" / "kfp").iterdir()) / "ingest"
    assert not task.exists() or not list(task.iterdir())  # the failed task published nothing


@pytest.mark.parametrize("argv, message", [
    (["run", "--config", "demo", "--set", "ingset.preprocess.k_core=50"],
     "ingset: unknown key (did you mean 'ingest'?)"),
    (["validate", "--config", "demo", "--set", "teacher_corpus.teacher.extra_params.api_key=sk-abcdef123456"],
     "teacher_corpus.teacher.extra_params.api_key: looks like a secret"),
])
def test_sidreasoner_reports_expected_failures_in_one_line(argv, message, tmp_path, capsys):
    from pipeline import cli

    assert cli.main([*argv, "--out", str(tmp_path / "run")] if argv[0] == "run" else argv) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert f"error: invalid configuration:\n  {message}" in err and TRACEBACK not in err
    assert "sk-abcdef123456" not in err and not (tmp_path / "run").exists()
    with pytest.raises(ConfigError):  # --debug: the traceback
        cli.main([*argv, "--debug"])
