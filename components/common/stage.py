"""The small protocol every stage implements, and its two entry points.

A stage is declared once in ``components/<stage>/stage.py`` as a :class:`Stage`: its name, its
config section class, its named inputs and outputs, and a ``run`` function::

    def run(cfg, ctx, inputs, outputs, tracker) -> dict[str, dict]:
        # read inputs[...] URIs, write outputs[...] URIs atomically (components.common.storage),
        # log metrics through ``tracker``; return per-output metadata (digest, rows, ...)

The same declaration serves:

* the container / kfp component (:meth:`Stage.from_kfp`), which maps kfp artifacts' ``.path``
  to URIs, and
* the CLI, ``python -m components.<stage> --config PROFILE --out DIR --<input> URI`` — what you
  run to debug one stage by hand (:meth:`Stage.main`).

Either way :meth:`Stage.execute` opens the stage's MLflow run, logs the config section as
params and every input and output with its content digest, then calls ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from components.common import lineage, storage
from components.common.config import (
    ConfigError,
    RunSection,
    Section,
    StorageConfig,
    TrackingConfig,
    apply_overrides,
    config_hash,
    load_yaml,
    parse_section,
    parse_section_json,
)
from components.common.logs import setup_logging

log = logging.getLogger(__name__)


def git_commit() -> str:
    """The code version: ``SIDREASONER_GIT_COMMIT`` (set in images) or the checkout's HEAD."""
    if os.environ.get("SIDREASONER_GIT_COMMIT"):
        return os.environ["SIDREASONER_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[2], timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class StageContext(Section):
    """Everything a stage needs besides its own config section; the pipeline passes it as JSON."""

    run_key: str = ""
    """Identifies the pipeline run (KFP run id, or the local run id); keys the MLflow parent."""
    pipeline_name: str
    profile: str
    """Name of the run profile (the YAML file's stem)."""
    config_hash: str
    git_commit: str = "unknown"
    images: dict[str, str] = Field(default_factory=dict)
    tracking_uri: str
    experiment: str
    artifact_location: str | None = None
    cache_uri: str
    """Root of content-addressed caches shared across runs."""
    seed: int
    final_stage: str
    """The DAG's last stage; it marks the MLflow parent run FINISHED."""
    artifact_uris: dict[str, str] = Field(default_factory=dict)
    """Durable URI of each of this stage's artifacts when it differs from the local path the stage
    reads or writes (on a cluster kfp hands ``/gcs/...`` paths for ``gs://`` artifacts); lineage
    and the model registry record these."""

    def uri_of(self, name: str, path: str) -> str:
        return self.artifact_uris.get(name, path)

    @contextlib.contextmanager
    def tracked(self, stage: str) -> Iterator[lineage.StageRun]:
        parent_tags = {
            lineage.TAG_CONFIG_HASH: self.config_hash,
            lineage.TAG_PROFILE: self.profile,
            lineage.TAG_GIT: self.git_commit,
            lineage.TAG_IMAGES: json.dumps(self.images, sort_keys=True),
        }
        if not self.run_key.startswith(("local-", "cli-")):
            parent_tags["kfp.run_id"] = self.run_key
        with lineage.stage_run(
            tracking_uri=self.tracking_uri,
            experiment=self.experiment,
            artifact_location=self.artifact_location,
            run_key=self.run_key,
            stage=stage,
            parent_tags=parent_tags,
            parent_name=f"{self.pipeline_name}-{self.run_key}",
            close_parent=stage == self.final_stage,
        ) as tracker:
            yield tracker


RunFn = Callable[[Any, StageContext, Mapping[str, str], Mapping[str, str], lineage.StageRun],
                 dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class Stage:
    """Declaration of one pipeline stage (see the module docstring)."""

    name: str
    """The stage's name (its MLflow run, image, resources key)."""
    config: type[Section]
    run: RunFn
    description: str
    inputs: dict[str, str] = field(default_factory=dict)
    """Input name -> help text."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Output name -> file or folder name used by the CLI under ``--out``."""
    optional_inputs: dict[str, str] = field(default_factory=dict)
    """Inputs the pipeline wires only in some runs (e.g. ``previous`` in scheduled retraining)."""
    section: str = ""
    """Key of the stage's section in a run profile, when not its name (stages sharing one)."""

    @property
    def config_key(self) -> str:
        return self.section or self.name

    # -- the one execution path ----------------------------------------------------------------

    def execute(self, cfg: Section, ctx: StageContext, inputs: Mapping[str, str],
                outputs: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Run the stage inside its MLflow run; returns per-output metadata."""
        missing = [n for n in self.inputs if n not in inputs] + [n for n in self.outputs if n not in outputs]
        unknown = set(inputs) - set(self.inputs) - set(self.optional_inputs)
        if missing or unknown:
            raise ValueError(f"{self.name}: missing artifact(s) {missing}, unknown input(s) {sorted(unknown)}")
        with ctx.tracked(self.name) as tracker:
            tracker.log_params(cfg.model_dump(mode="json"))
            tracker.set_tags({"sidreasoner.seed": str(ctx.seed)})
            for name, path in inputs.items():
                tracker.log_dataset(name, ctx.uri_of(name, path), storage.digest(path), context="input")
            log.info("%s: starting (run %s)", self.name, ctx.run_key)
            metadata = self.run(cfg, ctx, inputs, outputs, tracker)
            for name, path in outputs.items():
                meta = metadata.setdefault(name, {})
                meta.setdefault("digest", storage.digest(path))
                tracker.log_dataset(name, ctx.uri_of(name, path), meta["digest"], context="output",
                                    extra={k: v for k, v in meta.items() if k != "digest"})
        log.info("%s: done; outputs: %s", self.name, dict(outputs))
        return metadata

    # -- kfp entry point -----------------------------------------------------------------------

    def from_kfp(self, config: str, context: str, run_key: str, **artifacts: Any) -> None:
        """Entry point of the stage's kfp component: artifacts are kfp Input/Output objects."""
        setup_logging()
        cfg = parse_section_json(self.config, config, self.config_key)
        ctx = StageContext.model_validate_json(context)
        ctx.run_key = run_key
        present = {n: a for n, a in artifacts.items() if a is not None}
        inputs = {n: present[n].path for n in [*self.inputs, *self.optional_inputs] if n in present}
        outputs = {n: present[n].path for n in self.outputs}
        ctx.artifact_uris = {n: a.uri for n, a in present.items() if a.uri and a.uri != a.path}
        metadata = self.execute(cfg, ctx, inputs, outputs)
        for name, meta in metadata.items():
            artifacts[name].metadata.update(meta)

    # -- CLI entry point -----------------------------------------------------------------------

    def main(self, argv: list[str] | None = None) -> int:
        """``python -m components.<stage>``: run this stage alone, outside any pipeline."""
        parser = argparse.ArgumentParser(
            prog=f"python -m components.{self.name}", description=self.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("--config", required=True, help="run profile YAML (pipeline/configs/*.yaml); "
                            f"this stage reads its '{self.config_key}' section")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help=f"override a profile value, e.g. {self.config_key}.<field>=value (repeatable)")
        parser.add_argument("--out", default=f"build/stages/{self.name}",
                            help="folder (local or gs://) for the outputs: "
                                 + ", ".join(f"{n} -> {f}" for n, f in self.outputs.items()))
        parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the profile's, "
                            "else MLFLOW_TRACKING_URI, else sqlite in --out)")
        for name, help_text in self.inputs.items():
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, metavar="URI",
                                help=help_text)
        for name, help_text in self.optional_inputs.items():
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="URI", help=f"(optional) {help_text}")
        args = parser.parse_args(argv)
        setup_logging()
        try:
            profile = apply_overrides(load_yaml(args.config), args.set)
            cfg = parse_section(self.config, profile.get(self.config_key, {}), self.config_key)
            ctx = cli_context(profile, Path(args.config).stem, self.name, args.out, args.tracking_uri,
                              config_hash(cfg))
        except ConfigError as exc:
            parser.exit(2, f"error: {exc}\n")
        outputs = {n: storage.join(args.out, f) for n, f in self.outputs.items()}
        inputs = {n: getattr(args, n) for n in [*self.inputs, *self.optional_inputs] if getattr(args, n)}
        metadata = self.execute(cfg, ctx, inputs, outputs)
        print(json.dumps({"outputs": outputs, "metadata": metadata}, indent=2, default=str))
        return 0


def cli_context(profile: dict[str, Any], profile_name: str, stage: str, out: str,
                tracking_uri: str | None, cfg_hash: str) -> StageContext:
    """Context for a stage run by hand: its own run key, MLflow store from the profile or --out."""
    run = parse_section(RunSection, profile.get("run", {}), "run")
    tracking = parse_section(TrackingConfig, profile.get("tracking", {}), "tracking")
    store = parse_section(StorageConfig, profile.get("storage", {}), "storage")
    uri = tracking_uri or tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    artifact_location = tracking.artifact_location
    if uri is None:
        if storage.is_gcs(out):
            raise ConfigError("--out is gs://: pass --tracking-uri (no local folder for an MLflow store)")
        Path(out).mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"
        artifact_location = artifact_location or str(Path(out).resolve() / "mlartifacts")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return StageContext(
        run_key=f"cli-{stage}-{stamp}", pipeline_name=run.name, profile=profile_name,
        config_hash=cfg_hash, git_commit=git_commit(), tracking_uri=uri,
        experiment=tracking.experiment, artifact_location=artifact_location,
        cache_uri=store.cache_uri, seed=run.seed, final_stage=stage,
    )


def stage_main(stage: Stage) -> None:
    """Body of each ``components/<stage>/__main__.py``."""
    sys.exit(stage.main())
