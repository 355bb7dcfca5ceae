"""``make smoke-gpu``: the GPU smoke run on this machine (README "GPU").

    python -m pipeline.smoke [--out DIR] [--set KEY=VALUE ...]

1. pre-flight: a CUDA GPU is visible to torch, vLLM imports, the NVIDIA driver can run the
   image's CUDA libraries (:mod:`components.common.hardware`);
2. the synthetic catalog (``sidreasoner demo-data``) into the profile's ``ingest.source``;
3. the whole pipeline with the ``smoke-gpu`` profile (``sidreasoner run``): GRPO with the paper
   profiles' prefix reward;
4. GRPO again on that run's artifacts with ``reward.mode: beam_rank`` (trie-constrained beams
   from TRL's colocated vLLM engine, which loads the trie logits processor), recorded in the
   same ``run.json`` as stage ``grpo_beam_rank``;
5. the hardware summary: libraries, driver, GPUs, per stage peak GPU memory and tokens/s, and
   the whole run's wall time against the 10-minute budget.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from components.common import hardware, storage
from components.common.config import ConfigError, apply_overrides, config_hash, load_yaml, parse_section
from components.common.errors import ExpectedError
from components.common.logs import setup_logging
from components.common.stage import cli_context

log = logging.getLogger("sidreasoner.smoke")

PROFILE = "smoke-gpu"
BUDGET_S = 600
"""The smoke run's time budget (issue 11): image pull and pod start-up not included."""
SECOND_MODE = "beam_rank"


def preflight() -> None:
    """Refuse a machine the smoke run cannot use, before anything is written."""
    hardware.check_driver(hardware.node_gpus())
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{PROFILE}: no CUDA GPU is visible to torch {torch.__version__} (a CPU build, or no "
                          "GPU in this container); run it where the GPU image's packages are installed")
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"{PROFILE}: vllm is not installed (pip install -c requirements/image-cuda.lock.txt "
                          "-e '.[gpu]')")


def grpo_again(run_dir: Path, mode: str = SECOND_MODE) -> dict[str, Any]:
    """GRPO with reward ``mode`` on the finished run's reasoning model, prompts and sid_map;
    its outputs, stats and hardware numbers are added to the run record as ``grpo_<mode>``."""
    from components.grpo import STAGE as GRPO

    record = json.loads((run_dir / "run.json").read_text())
    stages = record["stages"]
    inputs = {"reasoning_model": stages["reason_sft"]["model"]["uri"],
              "reasoning": stages["teacher_corpus"]["reasoning"]["uri"],
              "sid_map": stages["sid_quantize"]["sid_map"]["uri"]}
    profile = apply_overrides(load_yaml(run_dir / "config.yaml"), [f"grpo.reward.mode={mode}"])
    cfg = parse_section(GRPO.config, profile["grpo"], "grpo")
    out = run_dir / f"grpo-{mode}"
    ctx = cli_context(profile, PROFILE, GRPO.name, str(out), record["mlflow"]["tracking_uri"], config_hash(cfg))
    outputs = {name: storage.join(str(out), kind.file) for name, kind in GRPO.outputs.items()}
    metadata = GRPO.execute(cfg, ctx, inputs, outputs)
    name = f"grpo_{mode}"
    stages[name] = {output: {"uri": uri, "metadata": metadata.get(output, {})} for output, uri in outputs.items()}
    record["stats"][name] = storage.read_json(outputs["stats"])
    return record


def summary(record: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What the smoke run proves, from its run record: each GRPO mode's valid-SID rate, the
    evaluation's rows, and the time against the budget."""
    grpo = {name: stats.get("summary", {}) for name, stats in record["stats"].items() if name.startswith("grpo")}
    return {"seconds": round(seconds, 1), "budget_s": BUDGET_S, "within_budget": seconds <= BUDGET_S,
            "grpo_valid_sid_rate_last": {name: s.get("valid_sid_rate_last") for name, s in grpo.items()},
            "evaluate_rows": record["stats"].get("evaluate", {}).get("rows_per_split"),
            "hardware": record["hardware"]}


def main(argv: list[str] | None = None) -> int:
    from components.ingest.demo_data import write_demo_data
    from pipeline.config import load_config
    from pipeline.local import default_run_dir, hardware_summary, run_local

    parser = argparse.ArgumentParser(prog="python -m pipeline.smoke", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="run folder (default build/runs/<run name>-<time>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a smoke-gpu profile value (repeatable)")
    args = parser.parse_args(argv)
    setup_logging()
    start = time.monotonic()
    try:
        cfg, profile = load_config(PROFILE, args.set)
        preflight()
        cfg.check_hardware(cfg.requested_gpus())
        write_demo_data(cfg.ingest.source)
        out = Path(args.out) if args.out else default_run_dir(cfg)
        run_local(cfg, profile, out)
        record = grpo_again(out.resolve())
    except ExpectedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    record["hardware"] = hardware_summary(record)
    result = summary(record, time.monotonic() - start)
    record["smoke"] = result
    storage.write_json(out / "run.json", record)
    print(json.dumps(result, indent=2))
    if not result["within_budget"]:
        log.warning("the smoke run took %.0f s, over its %d s budget", result["seconds"], BUDGET_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
