"""``sidreasoner``: run the pipeline locally, compile it for Kubeflow, submit or schedule it.

    sidreasoner validate --config demo [--set k=v]          check a profile, print it resolved
    sidreasoner run      --config demo [--set k=v] [--out DIR]
    sidreasoner compile  --config PROFILE --out pipeline.yaml [--registry R --tag T]
    sidreasoner submit   --config PROFILE --host URL [--experiment E]
    sidreasoner schedule --config PROFILE --host URL --cron "0 0 3 * * *"
    sidreasoner lineage  models:/NAME@production --tracking-uri URI   model -> ... -> catalog
    sidreasoner serve    --config demo [--model-uri models:/NAME@ALIAS] [--port 5001] [--serving engine=vllm]
    sidreasoner demo-data --out DIR [--items N --users N --seed S]
    sidreasoner tiny-backbone --items URI [--corpus URI] [--sid-map URI] --out DIR [--vocab-size N ...]

``--config`` takes a path or the name of a profile in ``pipeline/configs/``. Every command
validates the whole profile before doing anything else. An expected failure (bad config, bad
input, storage trouble, a failed stage of ``run``) is printed as one line, ``error: ...``, with
a non-zero exit (2 for config errors); ``--debug`` shows its traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import yaml

from components.common.config import ConfigError
from components.common.errors import ExpectedError
from components.common.logs import setup_logging
from components.common.processes import interpreter_environ
from pipeline.config import STAGES, RunConfig, load_config

log = logging.getLogger("sidreasoner")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="profile path or name in pipeline/configs/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. ingest.preprocess.k_core=3 (repeatable)")


def _cluster_args(parser: argparse.ArgumentParser) -> None:
    _add_config_args(parser)
    parser.add_argument("--registry", help="image registry (overrides images.registry)")
    parser.add_argument("--tag", help="image tag (overrides images.tag)")


def _load(args: argparse.Namespace) -> tuple[RunConfig, str]:
    overrides = list(args.set)
    if getattr(args, "registry", None):
        overrides.append(f"images.registry={args.registry}")
    if getattr(args, "tag", None):
        overrides.append(f"images.tag={args.tag}")
    return load_config(args.config, overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    cfg, profile = _load(args)
    print(f"# profile {profile}: valid")
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    for problem in cfg.cluster_problems():
        print(f"# not cluster-ready: {problem}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import pandas as pd

    from components.common.training.launch import visible_gpus
    from components.evaluate.report import format_comparisons_table, format_metrics_table
    from pipeline.local import default_run_dir, run_local

    cfg, profile = _load(args)
    cfg.check_hardware({stage: visible_gpus() for stage in STAGES})
    out = Path(args.out) if args.out else default_run_dir(cfg)
    record = run_local(cfg, profile, out, verbose=args.verbose)
    print("\n" + format_metrics_table(pd.DataFrame(record["metrics"])))
    comparisons = format_comparisons_table(record["stats"].get("evaluate", {}).get("comparisons", []))
    if comparisons:
        print("\n" + comparisons)
    print(f"\nrun {record['run_id']} {record['status']}")
    print(f"run folder: {out.resolve()}")
    print(f"run record: {out.resolve() / 'run.json'}")
    print(f"MLflow:     mlflow ui --backend-store-uri {record['mlflow']['tracking_uri']}")
    return 0


def compile_to(cfg: RunConfig, profile: str, path: Path) -> Path:
    """Compile the cluster pipeline for ``cfg`` into ``path`` (KFP IR YAML)."""
    from kfp import compiler

    from pipeline.dag import build_pipeline
    from pipeline.local import stage_context

    ctx = stage_context(cfg, profile, tracking_uri=cfg.tracking.uri or "",
                        artifact_location=cfg.tracking.artifact_location)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg, ctx, for_cluster=True), str(path))
    return path


def cmd_compile(args: argparse.Namespace) -> int:
    cfg, profile = _load(args)
    cfg.check_hardware(cfg.requested_gpus())
    for problem in cfg.cluster_problems():
        log.warning("not cluster-ready (submit would refuse): %s", problem)
    path = compile_to(cfg, profile, Path(args.out))
    print(f"compiled {profile} -> {path}")
    return 0


def _cluster_ready(cfg: RunConfig) -> None:
    cfg.check_hardware(cfg.requested_gpus())
    problems = cfg.cluster_problems()
    if problems:
        raise ConfigError("this profile cannot run on a cluster:\n  " + "\n  ".join(problems))


def _client(host: str):
    import kfp

    return kfp.Client(host=host)


def cmd_submit(args: argparse.Namespace) -> int:
    cfg, profile = _load(args)
    _cluster_ready(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_to(cfg, profile, Path(tmp) / "pipeline.yaml")
        run = _client(args.host).create_run_from_pipeline_package(
            str(package), arguments={}, run_name=args.run_name or f"{cfg.run.name}-{profile}",
            experiment_name=args.experiment, service_account=cfg.kubernetes.service_account,
        )
    print(json.dumps({"run_id": run.run_id, "experiment": args.experiment}))
    return 0


def normalize_cron(expr: str) -> str:
    """KFP schedules use 6-field cron (seconds first); accept the usual 5 fields too."""
    fields = expr.split()
    if len(fields) == 5:
        return "0 " + expr.strip()
    if len(fields) == 6:
        return " ".join(fields)
    raise ConfigError(f"--cron {expr!r}: expected 5 fields (min hour dom month dow) or 6 (with seconds)")


def cmd_schedule(args: argparse.Namespace) -> int:
    cfg, profile = _load(args)
    _cluster_ready(cfg)
    cron = normalize_cron(args.cron)
    client = _client(args.host)
    experiment = client.create_experiment(args.experiment)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_to(cfg, profile, Path(tmp) / "pipeline.yaml")
        job = client.create_recurring_run(
            experiment_id=experiment.experiment_id, job_name=args.name or f"{cfg.run.name}-{profile}",
            cron_expression=cron, pipeline_package_path=str(package), max_concurrency=1,
            no_catchup=True, service_account=cfg.kubernetes.service_account,
        )
    print(json.dumps({"recurring_run_id": job.recurring_run_id, "cron": cron}))
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from components.common.lineage import _mlflow
    from pipeline.lineage import LineageError, collect, render

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError("lineage: pass --tracking-uri (or set MLFLOW_TRACKING_URI)")
    _mlflow().set_tracking_uri(uri)
    try:
        chain = collect(args.target)
    except LineageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(chain))
    return 0


def serve_command(args: argparse.Namespace) -> tuple[str, list[str], dict[str, str]]:
    """The model URI, ``mlflow models serve`` command line and environment ``sidreasoner serve`` runs: the
    profile's registered model at its alias (or ``--model-uri``), its tracking store, and the
    ``--serving`` overrides of the model's settings (``SERVING_MODEL_CONFIG``)."""
    from components.common.config import parse_value
    from components.common.serving_config import ServingSettings

    cfg = load_config(args.config, args.set)[0] if args.config else None
    uri = args.model_uri
    if uri is None:
        if cfg is None or not cfg.retrain.enabled:
            raise ConfigError("serve: pass --model-uri, or a --config whose retrain.registered_model names the model")
        uri = f"models:/{cfg.retrain.registered_model}@{cfg.retrain.alias}"
    tracking = args.tracking_uri or (cfg.tracking.uri if cfg else None) or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking is None and uri.startswith("models:/"):
        raise ConfigError(f"serve: {uri} is in a model registry: pass --tracking-uri (or a --config with tracking.uri)")
    overrides = {}
    for item in args.serving:
        key, sep, raw = item.partition("=")
        if not sep or key not in ServingSettings.model_fields:
            raise ConfigError(f"--serving {item!r}: expected KEY=VALUE with KEY one of "
                              f"{sorted(ServingSettings.model_fields)}")
        overrides[key] = parse_value(raw)
    env = {**interpreter_environ(), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    if tracking:
        env["MLFLOW_TRACKING_URI"] = tracking
    if overrides:
        env["SERVING_MODEL_CONFIG"] = json.dumps(overrides)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
               "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    return uri, command, env


def cmd_serve(args: argparse.Namespace) -> int:
    uri, command, env = serve_command(args)
    print(f"serving {uri} on http://{args.host}:{args.port}/invocations (README: Serving)", flush=True)
    os.execvpe(command[0], command, env)  # the server's own signals and exit status


def cmd_demo_data(args: argparse.Namespace) -> int:
    from components.ingest.demo_data import write_demo_data

    paths = write_demo_data(args.out, n_items=args.items, n_users=args.users, seed=args.seed)
    print(json.dumps(paths))
    return 0


def cmd_tiny_backbone(args: argparse.Namespace) -> int:
    """An offline tiny Qwen3 backbone: tokenizer trained on the catalog (+ corpus) text."""
    import shutil

    from components.align_sft.config import TinyBackboneConfig
    from components.common import storage
    from components.common.artifacts import read_catalog
    from components.common.config import parse_section
    from components.common.training.backbone import build_tiny, extend_with_sids

    shape = parse_section(TinyBackboneConfig, {
        "vocab_size": args.vocab_size, "hidden_size": args.hidden_size, "intermediate_size": args.intermediate_size,
        "num_layers": args.layers, "num_heads": args.heads, "num_kv_heads": args.kv_heads,
        "max_positions": args.max_positions}, "tiny-backbone")
    with tempfile.TemporaryDirectory(prefix="sidreasoner-tiny-") as tmp:
        model_dir = build_tiny(Path(tmp) / "tiny", args.items, args.corpus, seed=args.seed, **shape.model_dump())
        added = 0
        if args.sid_map:
            extended = Path(tmp) / "with-sids"
            added, _ = extend_with_sids(model_dir, extended, read_catalog(args.sid_map).tokens, Path(tmp) / "dl",
                                        args.seed)
            shutil.rmtree(model_dir)
            model_dir = extended
        storage.copy(str(model_dir), args.out)
    print(json.dumps({"out": args.out, "sid_tokens_added": added}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidreasoner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an expected failure")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)  # every command takes --debug

    p = command("validate", help="validate a profile and print it resolved")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = command("run", help="run the pipeline locally (kfp.local)")
    _add_config_args(p)
    p.add_argument("--out", help="run folder (default build/runs/<name>-<time>)")
    p.add_argument("--verbose", action="store_true", help="also show what kfp's executor prints around each task "
                                                          "(its log lines and executor input/output JSON)")
    p.set_defaults(func=cmd_run)

    p = command("compile", help="compile the pipeline to KFP IR YAML")
    _cluster_args(p)
    p.add_argument("--out", required=True, help="IR file to write")
    p.set_defaults(func=cmd_compile)

    p = command("submit", help="compile and start a run on a Kubeflow Pipelines host")
    _cluster_args(p)
    p.add_argument("--host", required=True, help="KFP API endpoint")
    p.add_argument("--experiment", default="sidreasoner", help="KFP experiment")
    p.add_argument("--run-name")
    p.set_defaults(func=cmd_submit)

    p = command("schedule", help="create a recurring run (scheduled retraining)")
    _cluster_args(p)
    p.add_argument("--host", required=True, help="KFP API endpoint")
    p.add_argument("--cron", required=True, help="cron expression, 5 or 6 fields")
    p.add_argument("--experiment", default="sidreasoner", help="KFP experiment")
    p.add_argument("--name", help="recurring run name")
    p.set_defaults(func=cmd_schedule)

    p = command("lineage", help="print the chain from a model or run back to the catalog (MLflow)")
    p.add_argument("target", help="models:/NAME@ALIAS, models:/NAME/VERSION, NAME@ALIAS, an MLflow run id "
                                  "or a run key")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    p.set_defaults(func=cmd_lineage)

    p = command("serve", help="serve the registered model over HTTP (mlflow models serve)")
    p.add_argument("--config", help="profile: serve models:/<retrain.registered_model>@<retrain.alias> from its "
                                    "tracking store")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile value")
    p.add_argument("--model-uri", help="model to serve (default: the profile's registered model at its alias)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the profile's, else MLFLOW_TRACKING_URI)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own copy of the model")
    p.add_argument("--serving", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the served model, e.g. engine=vllm or device=cuda (repeatable)")
    p.set_defaults(func=cmd_serve)

    p = command("demo-data", help="write a synthetic Amazon-2018-format catalog")
    p.add_argument("--out", required=True)
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--users", type=int, default=800)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_demo_data)

    p = command("tiny-backbone", help="build an offline tiny Qwen3 backbone from the catalog (+ corpus) text")
    p.add_argument("--items", required=True, metavar="URI", help="items Parquet (tokenizer training text)")
    p.add_argument("--corpus", metavar="URI", help="corpus Parquet (more tokenizer training text)")
    p.add_argument("--sid-map", metavar="URI", help="sid_map Parquet: also add its SID tokens")
    p.add_argument("--out", required=True, help="model folder to write (local or gs://)")
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--intermediate-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--max-positions", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_backbone)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return args.func(args)
    except ExpectedError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
