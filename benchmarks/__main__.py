"""``python -m benchmarks [name ...]``: run every (or the named) ``bench_*`` module."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys

import benchmarks
from benchmarks.harness import write_result

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    wanted = [n if n.startswith("bench_") else f"bench_{n}" for n in argv] or names
    unknown = set(wanted) - set(names)
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; available: {names}", file=sys.stderr)
        return 2
    for name in wanted:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}: {module.__doc__.strip().splitlines()[0]}", flush=True)
        result = module.run()
        path = write_result(name.removeprefix("bench_"), result)
        print(json.dumps(result.get("summary", result), indent=2, default=str))
        print(f"-> {path}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
