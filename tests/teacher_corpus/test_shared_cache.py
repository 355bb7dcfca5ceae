"""A response cache shared by concurrent runs (components/teacher_corpus/cache.py): two real
processes asking the same prompts pay for each once; a crashed holder's claim is taken over
after its lease (at once when its process on this host is gone); a slow holder keeps its claim by
renewing it. Locally and on GCS (behind a proxy that enforces generation preconditions, as GCS
does)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.common import storage
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


def test_two_processes_sharing_a_cache_pay_each_prompt_once(gcs_bucket, gcs_preconditions):
    """On GCS; tests/reliability/test_faults.py has two stage runs sharing a local cache."""
    cache_root = f"{gcs_bucket}/cache"
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


def _claim_and_crash(cache: ResponseCache, key: str, **holder) -> None:
    """``cache`` takes the claim on ``key`` and stops renewing it, as a process killed mid-request
    would (the claim stays; ``holder`` overrides who it says holds it)."""
    async def go():
        entry, claim = await cache.claim(key)
        assert entry is None and claim is not None
        claim.renewer.cancel()
        return claim
    claim = asyncio.run(go())
    if holder:
        lease = json.loads(storage.read_versioned(claim.uri)[0])
        storage.write_if(claim.uri, json.dumps({**lease, **holder}).encode(), claim.version)


KEY = "cd" * 32


def test_a_crashed_holders_claim_is_taken_over_after_its_lease(cache_root):
    """A holder on another machine cannot be seen to die: its claim runs out after the lease."""
    _claim_and_crash(ResponseCache(cache_root, lease_s=1.0), KEY, host="another-host")
    waiter = ResponseCache(cache_root, lease_s=1.0)
    started = time.monotonic()
    entry, claim = asyncio.run(waiter.claim(KEY))
    assert entry is None and claim is not None and time.monotonic() - started >= 0.5
    assert waiter.claims.taken_over == 1 and waiter.claims.waited == 1
    asyncio.run(waiter.release(claim))
    assert storage.read_versioned(claim.uri) is None


def test_a_killed_process_on_this_host_is_taken_over_at_once(cache_root):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _claim_and_crash(ResponseCache(cache_root, lease_s=60.0), KEY, pid=dead.pid)
    waiter = ResponseCache(cache_root, lease_s=60.0)
    started = time.monotonic()
    entry, claim = asyncio.run(waiter.claim(KEY))
    assert claim is not None and waiter.claims.taken_over == 1 and time.monotonic() - started < 5


def test_a_slow_holder_keeps_its_claim_by_renewing_it(cache_root):
    """A request slower than the lease is not paid twice: its holder renews the claim."""
    holder, waiter = ResponseCache(cache_root, lease_s=1.0), ResponseCache(cache_root, lease_s=1.0)

    async def go():
        _, claim = await holder.claim(KEY)

        async def pay():
            await asyncio.sleep(3.0)  # three leases long
            await holder.put(KEY, {"text": "paid once", "usage": {}})
            await holder.release(claim)
        results = await asyncio.gather(pay(), waiter.claim(KEY))
        return results[1]
    entry, claim = asyncio.run(go())
    assert entry["text"] == "paid once" and claim is None
    assert waiter.claims.waited == 1 and waiter.claims.answered_by_others == 1 and waiter.claims.taken_over == 0
    assert holder.claims.lost == 0


def test_an_answer_stored_meanwhile_is_found_without_a_claim(tmp_path):
    """Lookups read the store every time: no index read once at start."""
    first, second = ResponseCache(str(tmp_path)), ResponseCache(str(tmp_path))
    assert first.open() == 0 == second.open()

    async def go():
        await first.put("ab" * 32, {"text": "answer", "usage": {}})
        return await second.claim("ab" * 32)
    entry, claim = asyncio.run(go())
    assert entry["text"] == "answer" and claim is None
