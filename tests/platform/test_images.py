"""The images `make images` builds: one per stage, from the stage's own build context, named as the
compiled IR names them, installing only hash-checked locks, as a numeric non-root user, labelled
with the commit. Read statically (`make -n`, the Dockerfiles and contexts), so these tests need
neither a Docker engine nor the network."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from components.common.config import ImagesConfig
from pipeline import cli, images
from pipeline.config import STAGES
from tests.platform.images import DOCKER, ROOT, instructions, make_images_plan

REGISTRY, TAG = "registry.test/team/sidreasoner", "0a1b2c3-dirty"
STAGE_IMAGES = images.stages()


@pytest.fixture(scope="module")
def plan():
    return make_images_plan(REGISTRY, TAG)


def test_stages_are_the_component_packages_with_a_cli():
    packages = sorted(p.name for p in (ROOT / "components").iterdir() if (p / "__main__.py").is_file())
    assert STAGE_IMAGES == packages and "common" not in STAGE_IMAGES
    assert set(STAGES) <= set(STAGE_IMAGES), "every stage of the DAG has an image"
    assert {images.image_flavour(stage) for stage in STAGE_IMAGES} == {"cpu", "cuda"}


def test_the_flavour_is_the_stages_own_declaration(tmp_path):
    from pipeline.config import DECLARATIONS

    assert {stage: images.image_flavour(stage) for stage in DECLARATIONS} == {
        stage: declaration.image for stage, declaration in DECLARATIONS.items()}
    package = tmp_path / "components" / "sample"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('STAGE = Stage(name="sample", config=C, run="m:f", description="")\n')
    assert images.image_flavour("sample", tmp_path) == "cpu"  # Stage's default
    (package / "__init__.py").write_text('FLAVOUR = "cuda"\nSTAGE = Stage(name="sample", image=FLAVOUR)\n')
    with pytest.raises(images.ImageError, match=r"Stage\(image=...\) must be the literal 'cpu' or 'cuda'"):
        images.image_flavour("sample", tmp_path)


def test_make_images_builds_every_stage_from_its_context_under_its_ir_name(plan):
    ir_names = ImagesConfig(registry=REGISTRY, tag=TAG)
    stage_builds = {b.context.removeprefix("build/images/"): b for b in plan if b.context.startswith("build/images/")}
    assert sorted(stage_builds) == STAGE_IMAGES
    for stage, build in stage_builds.items():
        assert build.tag == ir_names.for_stage(stage)
        assert build.dockerfile is None  # the context's own Dockerfile
        assert build.prepared_by == f"python3 -m pipeline.images context {stage} --out build/images"
    others = [b for b in plan if b not in stage_builds.values()]
    assert [(b.context, b.dockerfile, b.tag) for b in others] == [
        (".", "docker/mlflow-server.Dockerfile", f"{REGISTRY}/mlflow-server:{TAG}")]
    assert len({b.tag for b in plan}) == len(plan)


def test_compiled_ir_names_exactly_the_built_images(plan, tmp_path):
    out = tmp_path / "pipeline.yaml"
    retraining = ["--set", "retrain.registered_model=sidreasoner-demo",  # the DAG with every stage
                  "--set", "tracking.uri=http://mlflow.sidreasoner.svc.cluster.local:5000"]
    assert cli.main(["compile", "--config", "demo", "--registry", REGISTRY, "--tag", TAG, "--out", str(out),
                     *retraining]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    ir_images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    built = {b.context.removeprefix("build/images/"): b.tag for b in plan}
    assert ir_images == {built[stage] for stage in STAGES}


def test_make_compile_passes_registry_and_tag():
    out = subprocess.run(["make", "-n", "compile", "REGISTRY=r.test/x", "TAG=abc1234"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
    assert re.search(r"sidreasoner compile --config demo .*--registry r\.test/x --tag abc1234", out), out


def test_make_images_refuses_without_an_engine(tmp_path):
    # A docker client whose `info` fails, like this machine's (no daemon): nothing may be built.
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n[ "$1" = info ] && exit 1\nexit 0\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    result = subprocess.run(["make", "images", "REGISTRY=r.test/x", "TAG=t"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "no Docker engine" in result.stderr and "Nothing was built" in result.stderr
    assert calls.read_text().split() == ["info"]


def test_make_push_needs_a_registry():
    result = subprocess.run(["make", "-n", "push"], cwd=ROOT, capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "REGISTRY"})
    assert result.returncode != 0 and "make push needs REGISTRY" in result.stderr
    out = subprocess.run(["make", "-n", "push", "REGISTRY=r.test/x", "TAG=t"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for image in [*STAGE_IMAGES, "mlflow-server"]:
        assert f"r.test/x/{image.replace('_', '-')}:t" in out


# ---- Dockerfiles ---------------------------------------------------------------------------

#: Every Dockerfile a build uses: each stage context's (its flavour's template with its name) and
#: the MLflow server's.
DOCKERFILES = {**{f"{stage} context": images.dockerfile(stage) for stage in STAGE_IMAGES},
               "mlflow-server": (DOCKER / "mlflow-server.Dockerfile").read_text()}


def test_every_template_is_used():
    templates = {p.relative_to(ROOT).as_posix() for p in DOCKER.glob("stage-*.Dockerfile")}
    assert templates == set(images.TEMPLATES.values())


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_only_hash_checked_locks(name):
    for instruction, args in instructions(DOCKERFILES[name]):
        if instruction != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            if re.search(r"\bpip install\b", command):
                if " -r " in command:
                    assert "--require-hashes" in command and "--no-deps" in command, command
                else:  # the stage's code, whose dependencies are all in the locks
                    assert "--no-deps" in command and "/tmp/stage" in command, command


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_as_numeric_non_root_user(name):
    users = [args for instruction, args in instructions(DOCKERFILES[name]) if instruction == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users


@pytest.mark.parametrize("stage", STAGE_IMAGES)
def test_stage_image_is_labelled_with_the_commit_after_its_dependencies(stage):
    steps = instructions(images.dockerfile(stage))
    assert ("ARG", f"STAGE={stage}") in steps
    assert ("LABEL", 'org.opencontainers.image.revision="${GIT_COMMIT}"') in steps
    assert ("ENV", "SIDREASONER_GIT_COMMIT=${GIT_COMMIT}") in steps
    # A new commit must not invalidate the layers installing the locks and the code.
    commit = steps.index(("ARG", "GIT_COMMIT=unknown"))
    installs = [i for i, (instruction, args) in enumerate(steps) if instruction == "RUN" and "pip install" in args]
    assert installs and max(installs) < commit


@pytest.mark.parametrize("stage", STAGE_IMAGES)
def test_stage_image_build_ends_importing_the_stage_and_the_executor(stage):
    instruction, args = instructions(images.dockerfile(stage))[-1]
    assert instruction == "RUN"
    assert 'python3 -m "components.${STAGE}" --help' in args and 'python3 -c "import kfp.dsl.executor_main"' in args


@pytest.mark.parametrize("stage", STAGE_IMAGES)
def test_stage_dockerfile_copies_only_its_context(stage):
    files = images.context_files(stage)
    steps = instructions(files["Dockerfile"].decode())
    copied = [src for instruction, args in steps if instruction == "COPY" for src in args.split()[:-1]]
    assert copied and all(any(f == src or f.startswith(src + "/") for f in files) for src in copied), copied
    runs = " ".join(args for instruction, args in steps if instruction == "RUN")
    installed = re.findall(r"pip install [^&]*?-r /tmp/(\S+)", runs)
    assert installed == [images.CONTEXT_BUILD_LOCK, images.CONTEXT_STAGE_LOCK]


def test_mlflow_server_context_admits_only_what_it_copies():
    admitted = {line[1:].strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    copied = {src for instruction, args in instructions(DOCKERFILES["mlflow-server"]) if instruction == "COPY"
              for src in args.split()[:-1]}
    assert copied == admitted
    assert all(Path(ROOT / src).is_file() for src in copied)
