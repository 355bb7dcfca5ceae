"""The whole stage against the local teacher with faults and bad outputs: retries happen, nothing
is lost, leaks never enter the corpus, budgets stop cleanly, a killed run resumes without a
duplicate call, and the API key appears nowhere."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from components.common.artifacts import read_catalog
from components.common.sid import find_sids
from components.teacher_corpus import STAGE
from components.teacher_corpus.cache import CLAIMS
from components.teacher_corpus.stage import BudgetStop, run
from components.teacher_corpus.teacher import TeacherError
from components.teacher_corpus.validation import generic_words, target_leaks
from tests.teacher_corpus.helpers import (
    API_KEY,
    API_KEY_ENV,
    RecordingTracker,
    config,
    context,
    outputs,
    teacher_section,
    toy_samples,
    write_inputs,
)
from tests.teacher_server import TeacherServer, echo_sids

REPO = Path(__file__).resolve().parents[2]
INVENTED = "<a_3><b_7><c_7>"  # a well-formed SID that names no item of the 14-item catalog


def _inputs(tmp_path):
    # four users with distinct histories (toy users 0 and 4 would share theirs)
    return write_inputs(tmp_path / "in", samples=toy_samples(n_users=4))


class BadTeacher:
    """Answers like the echo teacher, except: every item narrative first invents a SID; every
    reasoning path first leaks the target's title; for one user it always leaks the target SID."""

    def __init__(self, catalog, always_leak_title: str):
        self.sid_of_title = {item.title: item.sid for item in catalog.items.values()}
        self.always_leak_title = always_leak_title
        self.seen: Counter = Counter()

    def __call__(self, messages):
        prompt = messages[-1]["content"]
        self.seen[prompt] += 1
        first = self.seen[prompt] == 1
        if "For your guidance only" in prompt:  # user_reasoning
            title = re.search(r'the item this user chose next was\s+"(.+?)"', prompt, re.S).group(1)
            if title == self.always_leak_title:
                return echo_sids(messages) + f" I bet on {self.sid_of_title[title]}."
            return echo_sids(messages) + f" Surely they buy {title} next." if first else None
        if "identified by the code" in prompt and first:  # item_narrative
            return echo_sids(messages) + f" It goes well with {INVENTED}."
        return None


def test_faults_and_bad_outputs_end_to_end(tmp_path, api_key, mlflow_server, caplog):
    caplog.set_level(logging.DEBUG)
    paths = _inputs(tmp_path)
    catalog = read_catalog(paths["sid_map"], paths["items"])
    leaker_target = catalog.items["i1"]  # the target of toy user 3's last train sample
    bad = BadTeacher(catalog, always_leak_title=leaker_target.title)
    out = outputs(tmp_path / "out")
    with TeacherServer(respond=bad) as server:
        server.inject("429", 2, retry_after=0.05)
        server.inject("500", 2)
        server.inject("malformed", 1)
        server.inject("slow", 1, delay=4.0)
        cfg = config(teacher=teacher_section(server.url, timeout_s=1.5))
        STAGE.execute(cfg, context(tmp_path, tracking_uri=mlflow_server, run_key="kfp-teacher-e2e"), paths, out)
        requests = list(server.requests)

    stats = json.loads(Path(out["stats"]).read_text())
    corpus = pq.read_table(out["corpus"]).to_pylist()
    reasoning = pq.read_table(out["reasoning"]).to_pylist()

    # retries happened, one per injected fault
    assert stats["teacher"]["retries"] == {"rate_limited": 2, "server_error": 2, "malformed": 1, "timeout": 1,
                                           "connection": 0}
    # every rejection counted by reason; the persistent leaker was dropped after 3 attempts
    assert stats["enrichment"]["rejections"]["item_narrative"] == {"unknown_sid": 14}
    assert stats["enrichment"]["rejections"]["user_reasoning"] == {"leaks_target_title": 3, "leaks_target_sid": 3}
    assert stats["enrichment"]["steps"]["user_reasoning"]["dropped"] == 1
    # nothing lost: every item has its narrative, every other user its reasoning and narrative
    narratives = [r for r in corpus if r["task"] == "item_narrative"]
    assert sorted(r["item_id"] for r in narratives) == sorted(catalog.items)
    assert len(reasoning) == 3 and len([r for r in corpus if r["task"] == "user_narrative"]) == 3
    assert stats["teacher"]["responses"] == 14 + 28 + 9 + 3
    assert stats["teacher"]["requests"] == stats["teacher"]["responses"] + 6 == len(requests)
    # leaks and invented SIDs never enter the outputs
    generic = generic_words(catalog.items.values())
    for row in reasoning:
        history = [catalog.items[i] for i in row["history_item_ids"]]
        assert not target_leaks(row["reasoning"], catalog.items[row["target_item_id"]], history, generic)
        assert row["target_item_id"] != leaker_target.item_id
    text = " ".join(str(v) for row in corpus + reasoning for v in row.values())
    assert set(find_sids(text, 3)) <= set(catalog.sids) and INVENTED not in text
    teacher_rows = [r for r in corpus if r["source"] == "teacher"]
    assert {r["teacher_model"] for r in teacher_rows} == {"openai/teacher"}
    assert all(r["loss"] == "full" and r["messages"] == [] and r["text"] for r in teacher_rows)

    # the key was used, and appears nowhere: logs, outputs, cache, MLflow
    assert {r.authorization for r in requests} == {f"Bearer {API_KEY}"}
    assert API_KEY not in caplog.text
    for path in [*map(Path, out.values()), *(tmp_path / "cache").rglob("*.json")]:
        assert API_KEY.encode() not in path.read_bytes(), path
    import mlflow

    client = mlflow.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("teacher-corpus-test")
    (stage_run,) = client.search_runs([exp.experiment_id], filter_string="tags.`sidreasoner.stage` = 'teacher_corpus'"
                                      " and tags.`sidreasoner.run_key` = 'kfp-teacher-e2e'")
    assert stage_run.data.params["teacher.api_key_env"] == API_KEY_ENV
    assert stage_run.data.params["prompt_templates.user_reasoning"] == stats["prompt_templates"]["user_reasoning"]["hash"]
    assert stage_run.data.metrics["teacher.retries.rate_limited"] == 2
    assert stage_run.data.metrics["enrichment.rejections.user_reasoning.leaks_target_sid"] == 3
    everything = json.dumps([stage_run.data.params, stage_run.data.tags, list(stage_run.data.metrics)])
    artifacts = Path(client.download_artifacts(stage_run.info.run_id, "", str(tmp_path / "mlflow-artifacts")))
    files = sorted(p for p in artifacts.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"teacher_corpus_stats.json", "teacher_samples.json"}
    assert API_KEY not in everything and all(API_KEY not in p.read_text() for p in files)
    review = json.loads((artifacts / "teacher_samples.json").read_text())["records"]
    assert any("leaks_target_title" in r["rejected_for"] for r in review)
    assert any(r["step"] == "item_narrative" and not r["rejected_for"] for r in review)


def test_budget_writes_what_was_done_and_a_rerun_finishes_it(tmp_path, api_key, teacher):
    paths = _inputs(tmp_path)
    tracker = RecordingTracker()
    out = outputs(tmp_path / "partial")
    run(config(teacher=teacher_section(teacher.url, budget={"max_requests": 12})), context(tmp_path), paths, out,
        tracker)
    stats = json.loads(Path(out["stats"]).read_text())
    assert stats["teacher"]["budget_exhausted"] and stats["teacher"]["requests"] == 12 == len(teacher.requests)
    partial = pq.read_table(out["corpus"]).to_pylist()
    assert 0 < len([r for r in partial if r["source"] == "teacher"]) < 18
    assert sum(s["skipped_budget"] for s in stats["enrichment"]["steps"].values()) > 0
    assert {r["task"] for r in partial if r["source"] == "template"} >= {"title_to_sid", "sid_history_to_sid"}

    out = outputs(tmp_path / "full")
    run(config(teacher=teacher_section(teacher.url)), context(tmp_path), paths, out, RecordingTracker())
    stats = json.loads(Path(out["stats"]).read_text())
    full = pq.read_table(out["corpus"]).to_pylist()
    assert len([r for r in full if r["source"] == "teacher"]) == 18  # 14 items + 4 users
    assert stats["teacher"]["cache_hits"] == 12
    sent = Counter(json.dumps(r.messages) for r in teacher.requests)
    assert max(sent.values()) == 1 and len(sent) == 14 * 2 + 4 * 2  # every request sent exactly once


def test_budget_can_fail_the_stage_instead(tmp_path, api_key, teacher):
    paths = _inputs(tmp_path)
    cfg = config(teacher=teacher_section(teacher.url, budget={"max_requests": 5, "on_exhausted": "fail"}))
    with pytest.raises(BudgetStop, match=r"teacher budget reached \(max_requests=5 .*re-run with a larger budget"):
        run(cfg, context(tmp_path), paths, outputs(tmp_path / "out"), RecordingTracker())
    assert not (tmp_path / "out").exists()
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 5  # what was paid for is kept


def test_fatal_teacher_error_writes_nothing_but_logs_the_accounting(tmp_path, api_key, teacher):
    paths = _inputs(tmp_path)
    teacher.inject("500", 100)
    tracker = RecordingTracker()
    cfg = config(teacher=teacher_section(teacher.url, max_retries=1, concurrency=1))
    with pytest.raises(TeacherError, match=r"failed after 2 attempts \(last: server_error"):
        run(cfg, context(tmp_path), paths, outputs(tmp_path / "out"), tracker)
    assert not (tmp_path / "out").exists()
    assert tracker.metrics[-1]["teacher"]["retries"]["server_error"] >= 1


def _cached_prompts(cache: Path) -> set[str]:
    return {json.dumps(json.loads(p.read_text())["messages"]) for p in cache.rglob("*.json")
            if CLAIMS not in p.parts}


def test_killed_run_restarts_without_duplicate_calls(tmp_path, api_key, mlflow_server):
    paths = _inputs(tmp_path)
    profile = tmp_path / "profile.yaml"
    with TeacherServer(latency=0.1) as server:
        profile.write_text(yaml.safe_dump({
            "run": {"name": "kill-test", "seed": 42},
            "storage": {"cache_uri": str(tmp_path / "cache")},
            "teacher_corpus": {"teacher": teacher_section(server.url, concurrency=2)},
        }))
        command = [sys.executable, "-m", "components.teacher_corpus", "--config", str(profile),
                   "--items", paths["items"], "--samples", paths["samples"], "--sid-map", paths["sid_map"],
                   "--out", str(tmp_path / "out"), "--tracking-uri", mlflow_server]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        log_path = tmp_path / "stage.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            deadline = time.monotonic() + 120
            while len(server.requests) < 12 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-2000:]
        assert not (tmp_path / "out" / "corpus.parquet").exists()  # a killed run publishes nothing
        done_before = _cached_prompts(tmp_path / "cache")
        first_run = len(server.requests)
        # stored = received minus at most the 2 in flight (concurrency 2) when the kill landed
        assert first_run - 2 <= len(done_before) <= first_run and len(done_before) < 36

        with open(log_path, "ab") as log:
            subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=300)
        second = [json.dumps(r.messages) for r in server.requests[first_run:]]

    assert not done_before & set(second), "a response stored before the kill was requested again"
    assert len(second) == len(set(second)) == 36 - len(done_before)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["teacher"]["cache_hits"] == len(done_before) and stats["teacher"]["requests"] == len(second)
    assert stats["enrichment"]["items"]["narratives"] == 14 and stats["reasoning"]["rows"] == 4
    assert API_KEY not in log_path.read_text()


def test_offline_backend_needs_no_api_and_marks_its_rows(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    paths = _inputs(tmp_path)
    out = outputs(tmp_path / "out")
    tracker = RecordingTracker()
    run(config(teacher={"backend": "offline"}, enrichment={"users": 2}), context(tmp_path), paths, out, tracker)
    stats = json.loads(Path(out["stats"]).read_text())
    assert stats["teacher"]["backend"] == "offline" and stats["teacher"]["requests"] == 0
    assert stats["corpus"]["sources"] == {"offline": 14 + 2, "template": 14 * 2 + 16 * 4}
    reasoning = pq.read_table(out["reasoning"]).to_pylist()
    assert len(reasoning) == 2 and {r["source"] for r in reasoning} == {"offline"}
    assert tracker.params == {"offline_writer": "offline-v2"}
    assert not (tmp_path / "cache").exists()  # nothing to cache
