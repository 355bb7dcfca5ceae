"""Each stage image's build context holds exactly what the image needs, and is independent of the
other stages: a change to one stage's code changes only its context (so only its image is rebuilt),
a change to shared code exactly the contexts of the stages importing it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pipeline import images
from tests.platform.images import ROOT, copy_repo

STAGES = images.stages()
PACKAGE_FILES = {stage: {p.relative_to(ROOT).as_posix() for p in (ROOT / "components" / stage).rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts} for stage in STAGES}


def digests(root: Path) -> dict[str, str]:
    return {stage: images.context_digest(images.context_files(stage, root)) for stage in images.stages(root)}


def changed_contexts(root: Path, edit) -> set[str]:
    before = digests(root)
    edit()
    after = digests(root)
    return {stage for stage in before if before[stage] != after.get(stage)}


def append(path: Path, text: str = "\n# a comment\n"):
    return lambda: path.write_text(path.read_text() + text)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("repo"))


@pytest.mark.parametrize("stage", STAGES)
def test_context_holds_its_package_and_only_the_shared_code_it_reaches(stage):
    files = images.context_files(stage)
    code = {f for f in files if f.startswith("components/")}
    assert set(files) - code == {"Dockerfile", "pyproject.toml", images.CONTEXT_BUILD_LOCK, images.CONTEXT_STAGE_LOCK}
    assert PACKAGE_FILES[stage] <= code
    assert files[images.CONTEXT_STAGE_LOCK] == (ROOT / images.STAGE_LOCKS / f"{stage}.lock.txt").read_bytes()
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc") or f.startswith("pipeline/")]
    # no stage imports another: nothing of another stage's package
    for other in set(STAGES) - {stage}:
        assert not [f for f in code if f.startswith(f"components/{other}/")], other


def test_shared_code_is_cut_to_what_is_reached():
    ingest = images.context_files("ingest")
    assert "components/common/storage.py" in ingest
    assert not [f for f in ingest if f.startswith(("components/common/training", "components/common/constrained"))]
    align = images.context_files("align_sft")  # launch.strategy zero2/zero3 reads these files
    assert {"components/common/training/deepspeed/zero2.json",
            "components/common/training/deepspeed/zero3.json"} <= align.keys()
    assert "components/common/constrained_vllm.py" not in align


def test_written_context_is_exactly_its_files(tmp_path):
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "stale.py").write_text("left from an earlier context")
    target, digest = images.write_context("ingest", tmp_path)
    files = images.context_files("ingest")
    written = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert written == files and digest == images.context_digest(files)
    assert [p.name for p in tmp_path.iterdir()] == ["ingest"]  # no staging folder left behind


@pytest.mark.parametrize("stage", STAGES)
def test_context_installs_and_runs_its_stage_alone(stage, tmp_path):
    # What the image build does with the context, short of the locks (installed here already): pip
    # installs the code from the context's pyproject.toml, then the stage's CLI runs from what was
    # installed, with nothing of this checkout importable. A module the static scan missed fails here.
    context, _ = images.write_context(stage, tmp_path / "context")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(context)], check=True, capture_output=True)
    installed = {p.relative_to(target).as_posix() for p in (target / "components").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    assert installed == {f for f in images.context_files(stage) if f.startswith("components/")}
    shutil.rmtree(context)
    # -S: no .pth files, so not the editable install of this checkout; the venv's packages by path.
    run = ("import runpy, sys; sys.path[1:1] = sys.argv[1:3]; sys.argv = [sys.argv[3], '--help']; "
           "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")
    result = subprocess.run([sys.executable, "-S", "-c", run, str(target), sysconfig.get_paths()["purelib"],
                             f"components.{stage}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout


# ---- Independence ----------------------------------------------------------------------------


def test_change_to_one_stage_changes_only_its_context(repo):
    assert changed_contexts(repo, append(repo / "components/ingest/preprocess.py")) == {"ingest"}
    assert changed_contexts(repo, append(repo / "components/teacher_corpus/prompts/v1/item_analysis.yaml")) \
        == {"teacher_corpus"}
    assert changed_contexts(repo, append(repo / images.STAGE_LOCKS / "grpo.lock.txt")) == {"grpo"}


def test_change_to_shared_code_changes_exactly_the_contexts_reaching_it(repo):
    shared = sorted(p for p in (repo / "components/common").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    reached_by = {path: {s for s in STAGES if path.relative_to(repo).as_posix() in images.reach(s, repo).files}
                  for path in shared}
    for path, stages in reached_by.items():
        assert changed_contexts(repo, append(path)) == stages, path.relative_to(repo)
    everywhere = {path.name for path, stages in reached_by.items() if stages == set(STAGES)}
    assert {"stage.py", "storage.py", "lineage.py"} <= everywhere
    # The training library reaches the training stages only; vLLM's decoding, the stages decoding a
    # model (evaluate, grpo's rollouts, the served model's promote and recommend) only.
    assert reached_by[repo / "components/common/training/launch.py"] == {"align_sft", "reason_sft", "grpo"}
    assert reached_by[repo / "components/common/training/deepspeed/zero3.json"] == {"align_sft", "reason_sft", "grpo"}
    assert reached_by[repo / "components/common/constrained_vllm.py"] == {"evaluate", "grpo", "promote", "recommend"}


def test_image_recipe_changes_change_their_flavour(repo):
    cpu = {s for s in STAGES if images.image_flavour(s) == "cpu"}
    assert changed_contexts(repo, append(repo / images.TEMPLATES["cpu"])) == cpu
    assert changed_contexts(repo, append(repo / images.BUILD_LOCK)) == set(STAGES)


def test_changes_outside_the_images_change_no_context(repo):
    assert changed_contexts(repo, append(repo / "pipeline/dag.py")) == set()
    assert changed_contexts(repo, append(repo / "README.md")) == set()
    assert changed_contexts(repo, append(repo / "requirements/image-cuda.lock.txt", "\n")) == set()


def test_cli_assembles_contexts_and_names_an_unknown_stage(tmp_path, capsys):
    assert images.main(["context", "ingest", "promote", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{stage}: {tmp_path / stage} sha256:{images.context_digest(images.context_files(stage))}"
                       for stage in ("ingest", "promote")]
    assert images.main(["context", "ingest", "ranker", "--out", str(tmp_path / "other")]) == 1
    assert "error: not a stage: ranker (stages: align_sft, " in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
