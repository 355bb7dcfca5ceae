"""The small protocol every stage implements: one declaration, one ``run`` function, two entry points.

A stage is declared once, in its package's ``__init__.py``, as a :class:`Stage`::

    STAGE = Stage(
        name="reason_sft", config=ReasonSFTConfig, run="components.reason_sft.stage:run",
        description="...", image="cuda", resources=ResourceSpec(...),
        inputs={"sft_model": Input(artifacts.MODEL, "align_sft.model", "the aligned model"), ...},
        outputs={"model": artifacts.MODEL, "stats": artifacts.STATS},
    )

and its ``run`` (in ``stage.py``, the stage's recipe, read top to bottom)::

    def run(cfg, ctx, inputs, outputs, tracker) -> dict[str, dict]:
        # read inputs[...] URIs, write outputs[...] URIs atomically (components.common.storage),
        # log metrics through ``tracker``; return per-output metadata (digest, rows, ...)

Everything else is derived from the declaration: the kfp component and the DAG's edges
(``pipeline/dag.py``: an input names the ``<stage>.<output>`` it comes from, and ``when`` wires
optional ones), the run profile's section and the stage's Kubernetes resources
(``pipeline/config.py``), its image (``pipeline/images.py``), and the CLI (:meth:`Stage.main`,
``python -m components.<stage>``). The ``run`` function is named, not imported, so reading a
declaration (to validate a profile or compile the DAG) costs no training library import.

Either entry point goes through :meth:`Stage.execute`: every input is checked against its
artifact contract, all inputs must share one SID space (:mod:`components.common.artifacts`), and
an input its producer published must be whole and unchanged (:mod:`components.common.publish`)
before anything else happens; then the stage's MLflow run opens, the config section is logged as
params and every input and output with its content digest (each computed once), and ``run`` is
called with *staging* URIs for its outputs, which are published together once it returns: a
stage's outputs appear all at once or not at all, whatever the stage's code does.

**Failures.** An :class:`~components.common.errors.ExpectedError` (bad input, bad config,
storage trouble, a teacher that refuses) ends either entry point with its one-line message and
exit code, naming final URIs (never staging ones); ``--debug`` shows the traceback. Under
``sidreasoner run`` the message is also left in ``$SIDREASONER_FAILURE_DIR/<stage>.json`` for
the run record. SIGTERM (a pod deleted, Ctrl-C from a parent) unwinds like an error, so the
staging folders are removed.

**Profile validation on the CLI.** A stage CLI validates the whole profile, every ``--set``
override included, before any work, so a typo in any section (``--set
ingset.preprocess.k_core=50``) stops it as ``sidreasoner validate`` would. Where the full package
is installed (the dev venv) that is ``pipeline.config.validate_profile``, found through the
``sidreasoner.profile`` entry point: every section and cross-section rule. A stage image holds
only its own package and the common code it reaches (``pipeline/images.py``), so there the CLI
checks what it can without the other stages' config classes: no key anywhere holds a secret,
every top-level key is a known section (did-you-mean for typos), the shared sections and its own
section are valid; the contents of other stages' sections are not checked there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from components.common import artifacts, cpu_kernels, hardware, lineage, publish, storage
from components.common.artifacts import ArtifactKind
from components.common.config import (
    SHARED_SECTIONS,
    STAGE_SECTIONS,
    ConfigError,
    CpuKernels,
    ImagesConfig,
    KubernetesConfig,
    ResourceSpec,
    RunSection,
    Section,
    StorageConfig,
    TrackingConfig,
    apply_overrides,
    check_no_secrets,
    check_profile_sections,
    config_hash,
    load_yaml,
    parse_section,
    parse_section_json,
)
from components.common.errors import ExpectedError, InputError
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
    cpu_kernels: CpuKernels = "native"
    """``run.cpu_kernels``: put in force by :meth:`Stage.execute` before the stage's work."""
    final_stage: str
    """The DAG's last stage; it marks the MLflow parent run FINISHED."""
    artifact_uris: dict[str, str] = Field(default_factory=dict)
    """Durable URI of each of this stage's artifacts when it differs from the local path the stage
    reads or writes (on a cluster kfp hands ``/gcs/...`` paths for ``gs://`` artifacts); lineage
    and the model registry record these."""
    input_digests: dict[str, str] = Field(default_factory=dict)
    """Content digest of each input, computed once by :meth:`Stage.execute`."""
    gcs_retry_deadline_s: float | None = None
    """``storage.gcs_retry_deadline_s`` of the profile (None: the environment's or the default)."""
    gcs_timeout_s: float | None = None
    """``storage.gcs_timeout_s`` of the profile (None: the environment's or the default)."""

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
class Input:
    """One input of a stage: its artifact kind and the stage output the DAG takes it from."""

    kind: ArtifactKind
    source: str
    """``<stage>.<output>`` that produces it in the pipeline."""
    help: str = ""
    when: Callable[[Any], bool] | None = None
    """Optional inputs: wired only in runs whose config (the root RunConfig) makes this true
    (e.g. ``previous`` in scheduled retraining); None: always wired, required on the CLI."""

    @property
    def optional(self) -> bool:
        return self.when is not None


def _always(_cfg: Any) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """Declaration of one pipeline stage (see the module docstring)."""

    name: str
    """The stage's name (its MLflow run, image, resources key, CLI module)."""
    config: type[Section]
    run: str
    """``module:function`` of the stage's :data:`RunFn`."""
    description: str
    inputs: dict[str, Input] = field(default_factory=dict)
    outputs: dict[str, ArtifactKind] = field(default_factory=dict)
    section: str = ""
    """Key of the stage's section in a run profile, when not its name (stages sharing one)."""
    image: Literal["cpu", "cuda"] = "cpu"
    """The image flavour: ``cuda`` for stages that run on GPUs (torch's CUDA build, vLLM)."""
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    """Default Kubernetes resources (``resources.<stage>`` in a profile overrides them)."""
    enabled: Callable[[Any], bool] = _always
    """Whether a run's DAG has this stage (given the root RunConfig)."""

    @property
    def config_key(self) -> str:
        return self.section or self.name

    def run_function(self) -> RunFn:
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)

    # -- the one execution path ----------------------------------------------------------------

    def check_inputs(self, inputs: Mapping[str, str]) -> None:
        """Before any work: each input keeps its artifact contract, and every SID space recorded
        by the inputs is the same one."""
        for name, uri in inputs.items():
            self.inputs[name].kind.check(uri, name)
        artifacts.check_same_sid_space({
            name: (uri, artifacts.sid_space_of(self.inputs[name].kind.name, uri)) for name, uri in inputs.items()})

    def check_published(self, inputs: Mapping[str, str], digests: Mapping[str, str]) -> None:
        """An input its producer published is whole (not from an interrupted publish) and still
        the bytes it published."""
        for name, uri in inputs.items():
            producer = self.inputs[name].source.split(".", 1)[0]
            recorded = publish.published_digest(uri, producer, name)
            if recorded is not None and recorded != digests[name]:
                raise InputError(f"input {name}: {uri} changed after {producer} published it (digest "
                                 f"{digests[name]}, published {recorded}); run {producer} again or restore it")

    def execute(self, cfg: Section, ctx: StageContext, inputs: Mapping[str, str],
                outputs: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Run the stage inside its MLflow run, its outputs staged and published together;
        returns per-output metadata."""
        required = [n for n, spec in self.inputs.items() if not spec.optional]
        missing = [n for n in required if n not in inputs] + [n for n in self.outputs if n not in outputs]
        unknown = sorted(set(inputs) - set(self.inputs)) + sorted(set(outputs) - set(self.outputs))
        if missing or unknown:
            raise ValueError(f"{self.name}: missing artifact(s) {missing}, unknown artifact(s) {unknown}")
        kernels = cpu_kernels.apply(ctx.cpu_kernels)  # before anything loads torch
        storage.configure(ctx.gcs_retry_deadline_s, ctx.gcs_timeout_s)
        self.check_inputs(inputs)
        digests = {name: storage.digest(uri) for name, uri in inputs.items()}
        self.check_published(inputs, digests)
        durable = {name: path for name, path in outputs.items() if name not in inputs}
        ctx = ctx.model_copy(update={"input_digests": digests, "artifact_uris": {**durable, **ctx.artifact_uris},
                                     "cpu_kernels": kernels})  # what ran: caches and checkpoints are keyed by it
        run = self.run_function()
        staged = publish.StagedOutputs(self.name, ctx.run_key, outputs)
        # a GPU stage first checks the node's driver, and records its GPUs and peak GPU memory
        with (hardware.gpu_stage() if self.image == "cuda" else contextlib.nullcontext()) as gpu, \
                ctx.tracked(self.name) as tracker:
            tracker.log_params(cfg.model_dump(mode="json"))
            tracker.set_tags({"sidreasoner.seed": str(ctx.seed), "sidreasoner.cpu_kernels": ctx.cpu_kernels})
            for name, path in inputs.items():
                tracker.log_dataset(name, ctx.uri_of(name, path), ctx.input_digests[name], context="input")
            log.info("%s: starting (run %s)", self.name, ctx.run_key)
            try:
                staging = staged.open()
                metadata = run(cfg, ctx, inputs, staging, tracker)
                if gpu is not None and gpu.stats() and "stats" in outputs:
                    metadata.setdefault("stats", {}).update(gpu.stats())
                for name, path in staging.items():
                    meta = metadata.setdefault(name, {})
                    if "digest" not in meta:  # the writers return theirs: no output is read twice
                        meta["digest"] = storage.digest(path)
                staged.publish({name: metadata[name]["digest"] for name in outputs})
            except ExpectedError as exc:
                exc.args = (staged.unstage(str(exc)),)  # name the final URIs, not the staging ones
                raise
            finally:
                staged.discard()
            for name, path in outputs.items():
                meta = metadata[name]
                tracker.log_dataset(name, ctx.uri_of(name, path), meta["digest"], context="output",
                                    extra={k: v for k, v in meta.items() if k != "digest"})
        log.info("%s: done; outputs: %s", self.name, dict(outputs))
        return metadata

    # -- kfp entry point -----------------------------------------------------------------------

    def from_kfp(self, config: str, context: str, run_key: str, **artifacts_: Any) -> None:
        """Entry point of the stage's kfp component: artifacts are kfp Input/Output objects.

        An expected failure ends the task with its one-line message and exit code (no
        traceback); any failure's message is also left for ``sidreasoner run``'s record."""
        setup_logging()
        _terminate_on_sigterm()
        try:
            cfg = parse_section_json(self.config, config, self.config_key)
            ctx = StageContext.model_validate_json(context)
            ctx.run_key = run_key
            present = {n: a for n, a in artifacts_.items() if a is not None}
            inputs = {n: present[n].path for n in self.inputs if n in present}
            outputs = {n: present[n].path for n in self.outputs}
            ctx.artifact_uris = {n: a.uri for n, a in present.items() if a.uri and a.uri != a.path}
            metadata = self.execute(cfg, ctx, inputs, outputs)
        except ExpectedError as exc:
            self._record_failure(str(exc), exc.exit_code, expected=True)
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(exc.exit_code) from None
        except BaseException as exc:
            self._record_failure(f"{type(exc).__name__}: {exc}", 1, expected=False)
            raise
        for name, meta in metadata.items():
            artifacts_[name].metadata.update(meta)

    def _record_failure(self, message: str, exit_code: int, expected: bool) -> None:
        """Leave the failure's message where ``sidreasoner run`` reads it (``SIDREASONER_FAILURE_DIR``)."""
        folder = os.environ.get(FAILURE_DIR_ENV)
        if folder:
            storage.write_json(storage.join(folder, f"{self.name}.json"), {
                "stage": self.name, "message": message, "exit_code": exit_code, "expected": expected})

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
                                 + ", ".join(f"{n} -> {kind.file}" for n, kind in self.outputs.items()))
        parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the profile's, "
                            "else MLFLOW_TRACKING_URI, else sqlite in --out)")
        parser.add_argument("--debug", action="store_true", help="show the traceback of an expected failure")
        for name, spec in self.inputs.items():
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=not spec.optional, metavar="URI",
                                help=("(optional) " if spec.optional else "") + f"{spec.kind.name} artifact: {spec.help}")
        args = parser.parse_args(argv)
        setup_logging()
        _terminate_on_sigterm()
        try:
            profile = apply_overrides(load_yaml(args.config), args.set)
            validate_profile(profile, self)
            cfg = parse_section(self.config, profile.get(self.config_key, {}), self.config_key)
            ctx = cli_context(profile, Path(args.config).stem, self.name, args.out, args.tracking_uri,
                              config_hash(cfg))
            outputs = {n: storage.join(args.out, kind.file) for n, kind in self.outputs.items()}
            inputs = {n: getattr(args, n) for n in self.inputs if getattr(args, n)}
            metadata = self.execute(cfg, ctx, inputs, outputs)
        except ExpectedError as exc:
            if args.debug:
                raise
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        print(json.dumps({"outputs": outputs, "metadata": metadata}, indent=2, default=str))
        return 0


#: Where ``sidreasoner run`` asks its tasks to leave the message of a failure.
FAILURE_DIR_ENV = "SIDREASONER_FAILURE_DIR"


def _terminate_on_sigterm() -> None:
    """SIGTERM unwinds like an error (``finally`` blocks run: staging folders are removed)."""
    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread: leave the default
        signal.signal(signal.SIGTERM, stop)


def validate_profile(profile: dict[str, Any], stage: Stage) -> None:
    """Check the whole profile before any work (see the module docstring for the two ways)."""
    full = [ep for ep in entry_points(group="sidreasoner.profile") if ep.name == "validate"]
    if full:
        full[0].load()(profile, stage.config_key)
        return
    check_no_secrets(profile)
    check_profile_sections(profile, SHARED_SECTIONS + STAGE_SECTIONS)
    for name, model in (("run", RunSection), ("images", ImagesConfig), ("tracking", TrackingConfig),
                        ("storage", StorageConfig), ("kubernetes", KubernetesConfig)):
        parse_section(model, profile.get(name, {}), name)
    resources = profile.get("resources", {})
    if isinstance(resources, dict) and stage.name in resources:
        parse_section(ResourceSpec, resources[stage.name], f"resources.{stage.name}")


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
        cache_uri=store.cache_uri, seed=run.seed, cpu_kernels=run.cpu_kernels, final_stage=stage,
        gcs_retry_deadline_s=store.gcs_retry_deadline_s, gcs_timeout_s=store.gcs_timeout_s,
    )


def stage_main(stage: Stage) -> None:
    """Body of each ``components/<stage>/__main__.py``."""
    sys.exit(stage.main())
