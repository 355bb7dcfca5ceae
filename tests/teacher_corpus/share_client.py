"""One teacher client in its own process, for the tests of a response cache shared by concurrent
runs: it completes the same prompts as its siblings and prints its accounting as JSON.

    python -m tests.teacher_corpus.share_client --url URL --cache URI --prompts N [--lease S] [--reverse]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys

from components.common.config import parse_section
from components.teacher_corpus.cache import ResponseCache
from components.teacher_corpus.config import TeacherConfig
from components.teacher_corpus.teacher import TeacherClient, resolve_api_key
from tests.teacher_corpus.helpers import teacher_section


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Describe shared item {k}."}] for k in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--prompts", type=int, required=True)
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--reverse", action="store_true", help="ask in the opposite order")
    args = parser.parse_args(argv)
    cfg = parse_section(TeacherConfig, teacher_section(args.url, cache_lease_s=args.lease, timeout_s=args.timeout,
                                                       concurrency=4), "teacher")
    client = TeacherClient(cfg, ResponseCache(args.cache, cfg.cache_lease_s), resolve_api_key(cfg))
    todo = prompts(args.prompts)[::-1] if args.reverse else prompts(args.prompts)
    print("STARTED", flush=True)

    async def go():
        return await asyncio.gather(*(client.complete(m) for m in todo))
    texts = [c.text for c in asyncio.run(go())]
    print(json.dumps({"texts": texts[::-1] if args.reverse else texts, "requests": client.stats.requests,
                      "cache_hits": client.stats.cache_hits, "claims": dataclasses.asdict(client.cache.claims)}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
