"""The shared machinery of the reliability tables: one row per bad input or fault.

A table is a list of :class:`Case` rows in ``tests/reliability/test_<stage>_*.py``. Each row
builds its bad input under a fresh folder and returns the :class:`StageCall` a user would type
(``python -m components.<stage> --config PROFILE --out DIR --set ...``); :func:`check` runs it
and asserts what issue 13 asks of every failure:

* it fails (an :class:`~components.common.errors.ExpectedError` of the row's type, non-zero exit);
* its message names the file, line or field (``names``) and says what the row expects
  (``says``), and gives no advice that does not apply (``never_says``);
* nothing is left under ``--out`` (no items without samples, no temp file), except what the row
  allows (``keeps``);
* no secret reaches the message or any file under the row's folder: every row runs with
  :data:`SECRET` in a secret-named environment variable (and the teacher's API key when it
  calls one), and rows may put it in their input too;
* no teacher request was paid twice (rows using the local teacher server, ``uses=("teacher",)``).

A fault the stage must *recover* from (a teacher that answers 429, two runs sharing a cache, a
killed run started again) is a row with ``recovers=True``: it must succeed, its outputs complete
(published together, :mod:`components.common.publish`), with the same secret and payment checks.

A row may use fixtures (``uses``: ``teacher`` -- a fresh local teacher server, ``gcs_bucket``,
``tiny_model``, ``hashed_encoder`` ...); its builder receives those it names as parameters.

To add a row for another stage: write a builder ``(root: Path) -> StageCall`` that puts the
stage's inputs (valid but for the one defect) under ``root`` and a profile with
:func:`write_profile`, then add ``Case(...)`` to that stage's table and parametrize a test over
it with ``[case.param() for case in TABLE]`` calling :func:`check`.

Exit codes: a stage CLI prints an ExpectedError as one line and exits with its ``exit_code``
(``--debug`` re-raises it); every row requires that, in-process (:func:`run_in_process`) and on
the real command line (:func:`run_cli`).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.common.errors import ExpectedError, InputError

REPO = Path(__file__).resolve().parents[2]

TRACEBACK = "Traceback (most recent call last)"
#: A secret every row's process can see (in a secret-named variable): it must never be written.
SECRET_ENV, SECRET = "RELIABILITY_API_TOKEN", "sk-reliability-6f1d0c9e2b7a4d3c"


@dataclass(frozen=True)
class StageCall:
    """A stage's command line: ``python -m components.<stage> --config ... --out ... --set ...``."""

    stage: str
    config: Path
    out: Path
    sets: tuple[str, ...] = ()
    inputs: dict[str, str] = field(default_factory=dict)
    """Input name -> URI (``--<input> URI``)."""

    def argv(self, tracking_uri: str) -> list[str]:
        args = ["--config", str(self.config), "--out", str(self.out), "--tracking-uri", tracking_uri]
        for item in self.sets:
            args += ["--set", item]
        for name, uri in self.inputs.items():
            args += [f"--{name.replace('_', '-')}", uri]
        return args


@dataclass(frozen=True)
class Case:
    """One row: a bad input or fault, how to build it, and what the user must be told."""

    id: str
    kind: str
    """The case class (README, reliability section): reader, dates, catalog mismatch, ..."""
    build: Callable[[Path], StageCall]
    """Writes the input under a fresh folder and returns the command a user would run."""
    names: str
    """The file, line or field the message must name, e.g. ``reviews.json.gz line 4``."""
    says: tuple[str, ...] = ()
    """Further fragments the message must contain (what is wrong, what to do)."""
    never_says: tuple[str, ...] = ()
    """Advice that does not apply to this cause and must not be given."""
    error: type[ExpectedError] = InputError
    keeps: tuple[str, ...] = ()
    """Glob patterns of what may remain under ``--out`` after the failure."""
    uses: tuple[str, ...] = ()
    """Fixtures the builder takes as keyword arguments (``teacher``, ``gcs_bucket`` ...)."""
    recovers: bool = False
    """The stage must recover from this fault and succeed."""
    then: Callable[..., None] | None = None
    """More checks after the run: ``then(call, outcome, **fixtures)``."""

    def param(self, *marks: Any) -> Any:
        return pytest.param(self, id=self.id, marks=marks)


@dataclass
class Outcome:
    """How a run ended, as the user saw it."""

    exit_code: int
    message: str
    """The error's message, or everything the command wrote to stderr."""
    traceback: bool
    """Whether the user saw a Python traceback."""
    error: BaseException | None = None


def write_profile(path: Path, sections: dict[str, Any]) -> Path:
    """A run profile YAML holding ``sections`` (every other section takes its defaults)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def run_in_process(call: StageCall, tracking_uri: str, capsys: pytest.CaptureFixture) -> Outcome:
    """``STAGE.main(argv)`` in this process: fast, and the raised error's type can be checked."""
    stage = importlib.import_module(f"components.{call.stage}").STAGE
    capsys.readouterr()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = stage.main(call.argv(tracking_uri))
    except ExpectedError as exc:  # escaping main(): the user would see a traceback
        return Outcome(exit_code=exc.exit_code, message=str(exc), traceback=True, error=exc)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:  # the CLI's log handler writes to this test's captured stderr, closed after it
        root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err
    return Outcome(exit_code=code or 0, message=err, traceback=TRACEBACK in err)


def run_cli(call: StageCall, tracking_uri: str, timeout: float = 300) -> Outcome:
    """The real command line, in a child process, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", f"components.{call.stage}", *call.argv(tracking_uri)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    return Outcome(exit_code=proc.returncode, message=proc.stderr, traceback=TRACEBACK in proc.stderr)


def leftovers(call: StageCall, keeps: tuple[str, ...] = ()) -> list[str]:
    """What a failed run left under ``--out``, besides what ``keeps`` allows."""
    if not call.out.exists():
        return []
    allowed = {p for pattern in keeps for p in call.out.glob(pattern)}
    return sorted(str(p.relative_to(call.out)) for p in call.out.rglob("*")
                  if p.is_file() and p not in allowed and not any(a in p.parents for a in allowed))


def assert_failed_clearly(case: Case, call: StageCall, outcome: Outcome) -> None:
    """The assertions every row makes about a failed run."""
    assert outcome.exit_code != 0, f"{case.id}: the run succeeded"
    if outcome.error is not None:
        assert isinstance(outcome.error, case.error), f"{case.id}: {type(outcome.error).__name__}: {outcome.error}"
    for fragment in (case.names, *case.says):
        assert fragment in outcome.message, f"{case.id}: {fragment!r} not in the message:\n{outcome.message}"
    for fragment in case.never_says:
        assert fragment not in outcome.message, f"{case.id}: inapplicable {fragment!r} in:\n{outcome.message}"
    assert not outcome.traceback, f"{case.id}: a traceback reached the user:\n{outcome.message}"
    assert outcome.exit_code == case.error.exit_code
    assert leftovers(call, case.keeps) == [], f"{case.id}: partial output left under {call.out}"


def assert_recovered(case: Case, call: StageCall, outcome: Outcome) -> None:
    """The assertions of a row the stage must recover from: it succeeded, outputs complete."""
    assert outcome.exit_code == 0 and not outcome.traceback, f"{case.id}: did not recover:\n{outcome.message}"
    stage = importlib.import_module(f"components.{call.stage}").STAGE
    record = json.loads((call.out / f"_PUBLISH.{call.stage}.json").read_text())
    assert record["state"] == "complete" and set(record["outputs"]) == set(stage.outputs)
    assert not list(call.out.glob(".staging-*")), f"{case.id}: a staging folder was left"


def assert_no_secret(case: Case, root: Path, outcome: Outcome, tracking_uri: str) -> None:
    """No secret in the message, in any file under the row's folder, or in the MLflow store."""
    secrets = [SECRET, *(v for k, v in os.environ.items() if k.endswith("_API_KEY") and len(v) >= 8)]
    store = Path(tracking_uri.removeprefix("sqlite:///"))
    files = [p for p in root.rglob("*") if p.is_file()] + ([store] if store.is_file() else [])
    for secret in secrets:
        assert secret not in outcome.message, f"{case.id}: a secret in the message"
        leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaked, f"{case.id}: a secret written to {leaked}"


def assert_paid_once(case: Case, root: Path, teacher: Any) -> None:
    """Every answer the teacher gave went to its own cache entry: no request (model, messages,
    parameters, attempt) was paid for twice, by one run or by several sharing the cache."""
    answered = [r for r in teacher.requests if r.fault is None]
    stored = [p for p in root.rglob("*.json") if re.fullmatch(r"[0-9a-f]{64}\.json", p.name)]
    assert len(answered) == len(stored), f"{case.id}: {len(answered)} answers paid for, {len(stored)} stored"


def build_with(build: Callable[..., StageCall], root: Path, fixtures: dict[str, Any]) -> StageCall:
    """Call a row's builder with the fixtures it names as parameters (others only set things up,
    e.g. ``hashed_encoder``)."""
    wanted = inspect.signature(build).parameters
    return build(root, **{name: value for name, value in fixtures.items() if name in wanted})


def check(case: Case, root: Path, tracking_uri: str, capsys: pytest.CaptureFixture,
          request: pytest.FixtureRequest | None = None) -> Outcome:
    """Build the row's input under ``root``, run the stage in-process, assert a clear failure
    (or, for a ``recovers`` row, a success), no secret written and nothing paid twice."""
    fixtures = {name: request.getfixturevalue(name) for name in case.uses} if case.uses else {}
    os.environ[SECRET_ENV] = SECRET
    try:
        call = build_with(case.build, root, fixtures)
        outcome = run_in_process(call, tracking_uri, capsys)
    finally:
        del os.environ[SECRET_ENV]
    if case.recovers:
        assert_recovered(case, call, outcome)
    else:
        assert_failed_clearly(case, call, outcome)
    assert_no_secret(case, root, outcome, tracking_uri)
    if "teacher" in fixtures:
        assert_paid_once(case, root, fixtures["teacher"])
    if case.then is not None:
        case.then(call, outcome, **fixtures)
    return outcome


def check_cli(case: Case, root: Path, tracking_uri: str) -> Outcome:
    """The same row through the real command line (slower: a fresh interpreter per row)."""
    call = case.build(root)
    outcome = run_cli(call, tracking_uri)
    assert_failed_clearly(case, call, outcome)
    return outcome
