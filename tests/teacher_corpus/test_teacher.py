"""The teacher client against the local teacher server: retries per fault, budgets, rate limit,
bounded concurrency, caching (local and gs://) and the API key."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from components.common.config import parse_section
from components.teacher_corpus.cache import ResponseCache
from components.teacher_corpus.config import TeacherConfig
from components.teacher_corpus.teacher import (
    BudgetExhausted,
    RequestRejected,
    TeacherClient,
    TeacherError,
    resolve_api_key,
)
from tests.teacher_corpus.helpers import API_KEY, teacher_section


def _client(url: str, cache_root: str, **overrides) -> TeacherClient:
    cfg = parse_section(TeacherConfig, teacher_section(url, **overrides), "teacher")
    return TeacherClient(cfg, ResponseCache(cache_root), resolve_api_key(cfg))


def _prompts(n: int, tag: str = "p") -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Describe item {tag}{k}."}] for k in range(n)]


def _complete_all(client: TeacherClient, prompts) -> list[str]:
    """Every answer; the first error is raised once every request has finished."""
    async def go():
        return await asyncio.gather(*(client.complete(m) for m in prompts), return_exceptions=True)
    results = asyncio.run(go())
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [c.text for c in results]


@pytest.mark.parametrize("fault, cause, options", [
    ("429", "rate_limited", {"retry_after": 0.05}),
    ("500", "server_error", {}),
    ("503", "server_error", {}),
    ("slow", "timeout", {"delay": 4.0}),
    ("malformed", "malformed", {}),
    ("empty", "malformed", {}),
])
def test_each_fault_is_retried_and_nothing_is_lost(teacher, api_key, tmp_path, fault, cause, options):
    teacher.inject(fault, count=2, **options)
    client = _client(teacher.url, str(tmp_path), timeout_s=1.5 if fault == "slow" else 10.0)
    texts = _complete_all(client, _prompts(6))
    assert len(texts) == 6 and all(t.startswith("This answer comes from") for t in texts)
    assert client.stats.retries[cause] == 2 and sum(client.stats.retries.values()) == 2
    assert client.stats.requests == 8 == len(teacher.requests)
    assert client.stats.responses == 6 and len(client.cache) == 6


def test_retry_after_pauses_every_request(teacher, api_key, tmp_path):
    teacher.inject("429", count=1, retry_after=0.4)
    client = _client(teacher.url, str(tmp_path), concurrency=1, backoff_initial_s=0.01)
    _complete_all(client, _prompts(3))
    first, retried = teacher.requests[0], teacher.requests[1]
    assert first.fault == "429"
    assert retried.received - first.received >= 0.4  # Retry-After is a lower bound on the wait


def test_retries_exhausted_fail_clearly_and_keep_what_was_done(teacher, api_key, tmp_path):
    client = _client(teacher.url, str(tmp_path), concurrency=1, max_retries=2)
    _complete_all(client, _prompts(2, "ok"))
    teacher.inject("500", count=3)
    with pytest.raises(TeacherError, match=r"failed after 3 attempts \(last: server_error"):
        _complete_all(client, _prompts(1, "doomed"))
    assert ResponseCache(str(tmp_path)).open() == 2


def test_refused_key_is_fatal_and_never_shown(teacher, api_key, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    teacher.inject("401", count=5)
    client = _client(teacher.url, str(tmp_path))
    with pytest.raises(TeacherError, match=r"refused the API key from \$TEACHER_TEST_API_KEY \(HTTP 401\)") as info:
        _complete_all(client, _prompts(1))
    assert len(teacher.requests) == 1  # not retried
    assert teacher.requests[0].authorization == f"Bearer {API_KEY}"  # the key was used ...
    assert API_KEY not in str(info.value) and API_KEY not in caplog.text  # ... and never shown


def test_key_quoted_by_the_provider_is_redacted_whatever_its_variable_name(teacher, tmp_path, monkeypatch,
                                                                           caplog):
    import secrets

    caplog.set_level(logging.DEBUG)
    key = f"sk-quoted-{secrets.token_hex(8)}"  # fresh: never registered by an earlier test
    monkeypatch.setenv("LLM_ACCESS", key)  # a name the generic redaction would not recognise
    teacher.inject("401")
    client = _client(teacher.url, str(tmp_path), api_key_env="LLM_ACCESS")
    with pytest.raises(TeacherError, match=r"Incorrect API key provided: \*\*\*") as info:
        _complete_all(client, _prompts(1))
    assert teacher.requests[0].authorization == f"Bearer {key}"
    assert key not in str(info.value) and key not in caplog.text


def test_refused_request_is_dropped_not_retried(teacher, api_key, tmp_path):
    teacher.inject("400", count=1)
    client = _client(teacher.url, str(tmp_path), concurrency=1)
    with pytest.raises(RequestRejected):
        _complete_all(client, _prompts(1))
    assert client.stats.rejected_requests == 1 and len(teacher.requests) == 1


def test_concurrency_is_bounded(api_key, tmp_path):
    from tests.teacher_server import TeacherServer

    with TeacherServer(latency=0.2) as server:
        client = _client(server.url, str(tmp_path), concurrency=3)
        _complete_all(client, _prompts(12))
    assert server.max_in_flight == 3


def test_requests_per_minute_spaces_request_starts(teacher, api_key, tmp_path):
    import time

    client = _client(teacher.url, str(tmp_path), concurrency=8, requests_per_minute=600)  # one per 0.1 s
    before = time.monotonic()
    _complete_all(client, _prompts(5))
    starts = sorted(r.received for r in teacher.requests)
    # the k-th request cannot start before its slot, k * 0.1 s after the first (arrivals may jitter later)
    assert all(start - before >= k * 0.1 for k, start in enumerate(starts))


def test_request_budget_stops_new_requests(teacher, api_key, tmp_path):
    client = _client(teacher.url, str(tmp_path), concurrency=2, budget={"max_requests": 3})

    async def go():
        return await asyncio.gather(*(client.complete(m) for m in _prompts(6)), return_exceptions=True)
    results = asyncio.run(go())
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert len(answered) == 3 and len(teacher.requests) == 3
    assert all(isinstance(r, BudgetExhausted) for r in results if isinstance(r, BaseException))
    assert client.stats.budget_exhausted.startswith("max_requests=3")
    # cached answers are still served once the budget is spent
    again = _client(teacher.url, str(tmp_path), budget={"max_requests": 1})
    assert len(_complete_all(again, [m for m, r in zip(_prompts(6), results) if r in answered])) == 3


def test_token_and_cost_budgets_reserve_the_worst_case(teacher, api_key, tmp_path):
    # each request may take (prompt chars / 3 + 1) + max_tokens = 7 + 100 tokens
    client = _client(teacher.url, str(tmp_path / "t"), concurrency=4, max_tokens=100, budget={"max_tokens": 250})
    with pytest.raises(BudgetExhausted, match=r"max_tokens=250"):
        _complete_all(client, _prompts(4))
    assert client.stats.tokens_in + client.stats.tokens_out <= 250 and len(teacher.requests) == 2

    priced = {"input_usd_per_million": 1000.0, "output_usd_per_million": 1000.0}  # $0.001 per token
    client = _client(teacher.url, str(tmp_path / "c"), concurrency=4, max_tokens=100, price=priced,
                     budget={"max_cost_usd": 0.25})
    with pytest.raises(BudgetExhausted, match=r"max_cost_usd=0\.25"):
        _complete_all(client, _prompts(4, "q"))
    assert client.stats.cost_usd <= 0.25 and client.stats.cost_usd > 0


def test_cost_budget_needs_a_known_price(api_key, tmp_path):
    with pytest.raises(TeacherError, match=r"price of 'openai/teacher' is unknown to litellm: set teacher\.price"):
        _client("http://127.0.0.1:9/v1", str(tmp_path), budget={"max_cost_usd": 1.0})


def test_identical_requests_in_flight_are_sent_once(api_key, tmp_path):
    from tests.teacher_server import TeacherServer

    with TeacherServer(latency=0.1) as server:
        client = _client(server.url, str(tmp_path), concurrency=4)
        texts = _complete_all(client, _prompts(1) * 4)
    assert len(set(texts)) == 1 and len(server.requests) == 1 and client.stats.cache_hits == 3


def test_cache_entries_hold_the_request_not_the_key(teacher, api_key, tmp_path):
    client = _client(teacher.url, str(tmp_path), extra_params={"top_p": 0.9})
    _complete_all(client, _prompts(2))
    files = sorted(Path(tmp_path).rglob("*.json"))
    assert len(files) == 2
    entry = json.loads(files[0].read_text())
    assert entry["model"] == "openai/teacher" and entry["params"]["top_p"] == 0.9
    assert entry["usage"]["prompt_tokens"] > 0 and entry["key"] == files[0].stem
    assert API_KEY not in files[0].read_text() and teacher.url not in files[0].read_text()
    # a different sampling parameter is a different request
    other = _client(teacher.url, str(tmp_path), extra_params={"top_p": 0.5})
    _complete_all(other, _prompts(2))
    assert other.stats.requests == 2 and len(teacher.requests) == 4


def test_gcs_cache_resumes_with_zero_calls(teacher, api_key, gcs_bucket):
    root = f"{gcs_bucket}/cache/teacher_corpus"
    first = _client(teacher.url, root)
    texts = _complete_all(first, _prompts(5))
    assert first.stats.requests == 5
    second = _client(teacher.url, root)
    assert _complete_all(second, _prompts(5)) == texts
    assert second.stats.requests == 0 and second.stats.cache_hits == 5 and len(teacher.requests) == 5


def test_retry_after_header_forms():
    import datetime as dt
    import email.utils

    from components.teacher_corpus.teacher import _retry_after

    class Limited(Exception):
        def __init__(self, headers):
            self.litellm_response_headers = headers

    assert _retry_after(Limited({"Retry-After": "2.5"})) == 2.5
    assert _retry_after(Limited({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
    assert 20 < _retry_after(Limited({"retry-after": email.utils.format_datetime(when, usegmt=True)})) <= 30
    assert _retry_after(Limited({})) is None and _retry_after(Limited({"retry-after": "soon"})) is None


def test_timed_out_requests_count_as_possibly_billed(teacher, api_key, tmp_path):
    """The provider may have finished (and billed) a request whose answer timed out: its worst
    case is counted and charged to the budget."""
    teacher.inject("slow", count=2, delay=1.5)
    client = _client(teacher.url, str(tmp_path), timeout_s=0.5, concurrency=1, max_tokens=100)
    _complete_all(client, _prompts(1))
    worst = len(_prompts(1)[0][0]["content"]) // 3 + 1 + 100
    assert client.stats.retries["timeout"] == 2 and client.stats.possibly_billed_requests == 2
    assert client.stats.possibly_billed_tokens == 2 * worst
    report = client.stats.as_dict(cost_known=True)
    assert report["possibly_billed"] == {"requests": 2, "tokens": 2 * worst, "cost_usd": 0.0}
    # the possibly billed tokens count against a token budget
    budgeted = _client(teacher.url, str(tmp_path / "b"), timeout_s=0.5, concurrency=1, max_tokens=100, max_retries=5,
                       budget={"max_tokens": 2 * worst + 50})
    teacher.inject("slow", count=2, delay=1.5)
    with pytest.raises(BudgetExhausted, match="max_tokens="):
        _complete_all(budgeted, _prompts(1, "other"))
    assert budgeted.stats.possibly_billed_requests == 2 and budgeted.stats.responses == 0


def test_a_key_echoed_in_an_answer_is_redacted_before_it_is_used_or_stored(api_key, tmp_path):
    from tests.teacher_server import TeacherServer, echo_sids

    with TeacherServer(respond=lambda messages: f"{echo_sids(messages)} (served for key {API_KEY})") as server:
        client = _client(server.url, str(tmp_path))
        texts = _complete_all(client, _prompts(3))
    assert all("(served for key ***)" in t for t in texts) and not any(API_KEY in t for t in texts)
    stored = [p.read_text() for p in tmp_path.rglob("*.json")]
    assert len(stored) == 3 and not any(API_KEY in text for text in stored)
