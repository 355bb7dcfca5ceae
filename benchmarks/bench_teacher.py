"""Teacher client throughput: the stage's client (cache, budget, retries, validation) at
concurrency 32 vs a bare ``litellm.acompletion`` loop at the same concurrency (target >= 0.9x),
and vs concurrency 1, against a local teacher answering after 200 ms; then a second run over
the same requests, which must make zero calls."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from components.common.config import parse_section  # noqa: E402
from components.teacher_corpus import validation  # noqa: E402
from components.teacher_corpus.cache import ResponseCache  # noqa: E402
from components.teacher_corpus.config import LengthBounds, TeacherConfig  # noqa: E402
from components.teacher_corpus.teacher import TeacherClient  # noqa: E402

LATENCY_S = 0.2
CONCURRENCY = 32
REQUESTS = 320  # ~2 s at the ideal 160 requests/s
SEQUENTIAL_REQUESTS = 25  # ~5 s at 5 requests/s
REPEATS = 6  # alternated, best kept: the 2-core machine is shared, single runs are noisy
API_KEY = "sk-bench-local"
BOUNDS = LengthBounds(min_chars=10, max_chars=10_000)


def _messages(tag: str, n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": "You are a product analyst."},
             {"role": "user", "content": f"Analyse product {tag}-{k}: a blue gel pen, fine point, pack of 12."}]
            for k in range(n)]


def _client(base_url: str, cache_dir: str, concurrency: int) -> TeacherClient:
    cfg = parse_section(TeacherConfig, {"model": "openai/teacher", "api_base": base_url, "api_key_env": None,
                                        "concurrency": concurrency, "timeout_s": 30.0, "max_tokens": 256},
                        "teacher")
    return TeacherClient(cfg, ResponseCache(cache_dir), API_KEY)


def _timed(coroutine) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of running ``coroutine``."""
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(coroutine)
    return time.perf_counter() - wall, time.process_time() - cpu


async def _run_client(client: TeacherClient, prompts: list[list[dict[str, str]]]) -> float:
    async def one(messages):
        text = (await client.complete(messages)).text
        return validation.check_item_analysis(validation.normalize(text), 3, frozenset(), BOUNDS)

    start = time.perf_counter()
    rejected = await asyncio.gather(*(one(m) for m in prompts))
    seconds = time.perf_counter() - start
    assert not any(rejected), "the local teacher's answers should all validate"
    return seconds


async def _run_bare(base_url: str, prompts: list[list[dict[str, str]]], concurrency: int) -> float:
    import litellm

    slots = asyncio.Semaphore(concurrency)

    async def one(messages):
        async with slots:
            response = await litellm.acompletion(
                model="openai/teacher", messages=messages, api_base=base_url, api_key=API_KEY, timeout=30.0,
                num_retries=0, max_retries=0, drop_params=True, temperature=0.7, max_tokens=256)
            return response.choices[0].message.content

    start = time.perf_counter()
    await asyncio.gather(*(one(m) for m in prompts))
    return time.perf_counter() - start


def _server_requests(base: str) -> int:
    with urllib.request.urlopen(f"{base}/stats", timeout=10) as resp:
        return json.load(resp)["requests"]


def run() -> dict:
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "tests.teacher_server", "--latency", str(LATENCY_S)],
                            cwd=repo, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        base = proc.stdout.readline().strip()
        if not base.startswith("http"):
            raise RuntimeError(f"teacher server did not start (got {base!r})")
        url = f"{base}/v1"
        with tempfile.TemporaryDirectory() as tmp:
            # warm-up: litellm's lazy imports and HTTP client creation, for both paths
            asyncio.run(_run_bare(url, _messages("warm-bare", CONCURRENCY), CONCURRENCY))
            asyncio.run(_run_client(_client(url, f"{tmp}/warm", CONCURRENCY), _messages("warm", CONCURRENCY)))

            bare, ours = [], []
            for r in range(REPEATS):  # alternated in ABBA order: drift on the shared machine hits both alike
                for which in (("bare", "ours") if r % 2 == 0 else ("ours", "bare")):
                    if which == "bare":
                        bare.append(_timed(_run_bare(url, _messages(f"bare{r}", REQUESTS), CONCURRENCY)))
                        continue
                    client = _client(url, f"{tmp}/c{r}", CONCURRENCY)
                    ours.append(_timed(_run_client(client, _messages(f"ours{r}", REQUESTS))))
                    assert client.stats.requests == REQUESTS and client.stats.cache_hits == 0
            sequential = asyncio.run(_run_client(_client(url, f"{tmp}/seq", 1),
                                                 _messages("seq", SEQUENTIAL_REQUESTS)))

            before = _server_requests(base)
            rerun_client = _client(url, f"{tmp}/c0", CONCURRENCY)
            rerun_s = asyncio.run(_run_client(rerun_client, _messages("ours0", REQUESTS)))
            rerun_calls = _server_requests(base) - before
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    bare_rps = REQUESTS / min(w for w, _ in bare)
    ours_rps = REQUESTS / min(w for w, _ in ours)
    seq_rps = SEQUENTIAL_REQUESTS / sequential
    bare_cpu_ms = 1000 * min(c for _, c in bare) / REQUESTS
    ours_cpu_ms = 1000 * min(c for _, c in ours) / REQUESTS
    return {
        "latency_s": LATENCY_S, "concurrency": CONCURRENCY, "requests": REQUESTS,
        "sequential_requests": SEQUENTIAL_REQUESTS,
        "bare_litellm_wall_cpu_s": bare, "client_wall_cpu_s": ours, "client_concurrency1_s": sequential,
        "rerun": {"s": rerun_s, "server_calls": rerun_calls, "cache_hits": rerun_client.stats.cache_hits},
        "summary": {
            "bare_litellm_c32_rps": round(bare_rps, 1),
            "client_c32_rps": round(ours_rps, 1),
            "client_c1_rps": round(seq_rps, 2),
            "client_vs_bare_throughput": round(ours_rps / bare_rps, 3),
            "client_vs_bare_median_pair_ratio": round(statistics.median(b[0] / o[0] for b, o in zip(bare, ours)), 3),
            "target_client_vs_bare": 0.9,
            "client_c32_vs_c1_speedup": round(ours_rps / seq_rps, 1),
            "bare_litellm_cpu_ms_per_request": round(bare_cpu_ms, 2),
            "client_cpu_ms_per_request": round(ours_cpu_ms, 2),
            "rerun_server_calls": rerun_calls,
            "rerun_s": round(rerun_s, 3),
        },
    }
