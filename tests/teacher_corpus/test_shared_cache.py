"""A response cache shared by concurrent runs (components/teacher_corpus/cache.py): two real
processes asking the same prompts pay for each once, locally and on GCS (behind a proxy that
enforces generation preconditions, as GCS does); a crashed holder's claims are taken over after
its lease; a slow holder keeps its claim by renewing it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.teacher_corpus.cache import ResponseCache
from tests.teacher_corpus.helpers import API_KEY, API_KEY_ENV
from tests.teacher_server import TeacherServer

REPO = Path(__file__).resolve().parents[2]


def _client(url: str, cache: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, **{API_KEY_ENV: API_KEY}, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "tests.teacher_corpus.share_client", "--url", url, "--cache",
                             cache, *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _result(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    assert API_KEY not in out + err
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(params=["local", "gcs"])
def cache_root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "cache")
    request.getfixturevalue("gcs_preconditions")
    return f"{request.getfixturevalue('gcs_bucket')}/cache"


def test_two_processes_sharing_a_cache_pay_each_prompt_once(cache_root):
    with TeacherServer(latency=0.3) as server:
        first = _client(server.url, cache_root, "--prompts", "12")
        second = _client(server.url, cache_root, "--prompts", "12", "--reverse")
        one, two = _result(first), _result(second)
    asked = [json.dumps(r.messages) for r in server.requests]
    assert len(asked) == len(set(asked)) == 12  # every prompt paid once, by one of the two
    assert one["texts"] == two["texts"]
    assert one["requests"] + two["requests"] == 12
    assert one["claims"]["waited"] + two["claims"]["waited"] >= 1  # they did meet on some prompt
    assert one["claims"]["taken_over"] == two["claims"]["taken_over"] == 0


def test_a_killed_holders_claims_are_taken_over_after_its_lease(tmp_path):
    """A holder on another machine cannot be seen to die: its claims run out after the lease."""
    cache = str(tmp_path / "cache")
    with TeacherServer() as server:
        server.inject("slow", count=4, delay=30.0)  # the first client's requests hang
        first = _client(server.url, cache, "--prompts", "4", "--lease", "5")
        deadline = time.monotonic() + 60
        while len(server.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        claims = sorted(Path(cache, "_claims").glob("*.json"))
        assert len(claims) == 4
        for path in claims:  # as if written on another host: only the lease can end them
            lease = json.loads(path.read_text())
            path.write_text(json.dumps({**lease, "host": "another-host"}))
        started = time.monotonic()
        second = _result(_client(server.url, cache, "--prompts", "4", "--lease", "5"))
        waited = time.monotonic() - started
    assert second["claims"]["taken_over"] == 4 and second["requests"] == 4
    assert waited >= 3  # it waited for the leases (5 s from the last renewal) to run out
    assert not list(Path(cache, "_claims").glob("*.json"))  # released once answered


def test_a_killed_run_on_this_host_is_taken_over_at_once(tmp_path):
    cache = str(tmp_path / "cache")
    with TeacherServer() as server:
        server.inject("slow", count=2, delay=30.0)
        first = _client(server.url, cache, "--prompts", "2")  # a 60 s lease
        deadline = time.monotonic() + 60
        while len(server.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        started = time.monotonic()
        second = _result(_client(server.url, cache, "--prompts", "2"))
    assert second["claims"]["taken_over"] == 2 and time.monotonic() - started < 30


def test_a_slow_holder_keeps_its_claim_by_renewing_it(tmp_path):
    """A request slower than the lease is not paid twice: its holder renews the claim."""
    cache = str(tmp_path / "cache")
    with TeacherServer() as server:
        server.inject("slow", count=1, delay=15.0)
        first = _client(server.url, cache, "--prompts", "1", "--lease", "5")
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        second = _client(server.url, cache, "--prompts", "1", "--lease", "5")
        one, two = _result(first), _result(second)
    assert len(server.requests) == 1 and one["requests"] == 1 and two["requests"] == 0
    assert two["claims"] == {"waited": 1, "answered_by_others": 1, "taken_over": 0, "lost": 0}
    assert one["texts"] == two["texts"]


def test_an_answer_stored_meanwhile_is_found_without_a_claim(tmp_path):
    """Lookups read the store every time: no index read once at start."""
    first, second = ResponseCache(str(tmp_path)), ResponseCache(str(tmp_path))
    assert first.open() == 0 == second.open()

    async def go():
        await first.put("ab" * 32, {"text": "answer", "usage": {}})
        return await second.claim("ab" * 32)
    entry, claim = asyncio.run(go())
    assert entry["text"] == "answer" and claim is None
