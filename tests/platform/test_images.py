"""The stage images: one per stage, named as the compiled IR names them, installing from hash locks
everything their stage's code imports. Everything is read statically (`make -n`, the Dockerfiles,
the locks, the stage sources), so these tests need neither a Docker engine nor the network."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from components.common.config import ImagesConfig
from pipeline import cli
from pipeline.config import STAGES
from tests.platform.images import (
    DOCKER,
    REQUIREMENTS,
    ROOT,
    Build,
    base_dockerfile,
    copied_locks,
    distributions,
    image_lock,
    instructions,
    make_images_plan,
    normalize,
    read_lock,
    stage_packages,
    third_party_imports,
)

REGISTRY, TAG = "registry.test/team/sidreasoner", "0a1b2c3-dirty"

#: Every stage of the DAG (ARCHITECTURE.md), including those not yet in ``pipeline.config.STAGES``:
#: their images are built and pushed ahead of them joining the pipeline.
DECLARED_STAGES = ("previous_model", "ingest", "sid_quantize", "baselines", "teacher_corpus", "align_sft", "reason_sft",
                   "grpo", "evaluate", "promote")

#: What the stages of each base are known to need (issue 7, STACK.md), beyond what the code
#: present in this checkout shows.
CUDA_STACK = ("torch", "transformers", "trl", "accelerate", "deepspeed", "peft", "vllm", "sentence-transformers")
CPU_STACK = ("litellm", "pyarrow", "pandas")

LOCKS = sorted(REQUIREMENTS.glob("*.lock.txt"))


@pytest.fixture(scope="module")
def plan():
    return make_images_plan(REGISTRY, TAG)


def stage_builds(plan: list[Build]) -> dict[str, Build]:
    """Stage -> its build in the plan (a stage image is the one built from docker/<stage>.Dockerfile)."""
    return {b.dockerfile.name.removesuffix(".Dockerfile"): b for b in plan if b.base}


def test_make_images_builds_every_stage_under_its_ir_name(plan):
    images = ImagesConfig(registry=REGISTRY, tag=TAG)
    builds = stage_builds(plan)
    assert set(STAGES) <= set(DECLARED_STAGES), "a new stage must be declared here and in the Makefile"
    assert sorted(builds) == sorted(DECLARED_STAGES)
    for stage, build in builds.items():
        assert build.tag == images.for_stage(stage)
    # Bases come first and are built once each.
    tags = [b.tag for b in plan]
    assert len(tags) == len(set(tags))
    for build in builds.values():
        assert tags.index(build.base) < tags.index(build.tag)


def test_every_stage_package_has_a_dockerfile(plan):
    builds = stage_builds(plan)
    for stage in stage_packages():
        assert (DOCKER / f"{stage}.Dockerfile").is_file(), f"components/{stage} has no docker/{stage}.Dockerfile"
        assert stage in builds, f"`make images` does not build {stage}"


def test_compiled_ir_names_exactly_the_built_images(plan, tmp_path):
    out = tmp_path / "pipeline.yaml"
    retraining = ["--set", "retrain.registered_model=sidreasoner-demo",  # the DAG with every stage
                  "--set", "tracking.uri=http://mlflow.sidreasoner.svc.cluster.local:5000"]
    assert cli.main(["compile", "--config", "demo", "--registry", REGISTRY, "--tag", TAG, "--out", str(out),
                     *retraining]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    ir_images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    builds = stage_builds(plan)
    assert ir_images == {builds[stage].tag for stage in STAGES}


def test_make_compile_passes_registry_and_tag():
    out = subprocess.run(["make", "-n", "compile", "REGISTRY=r.test/x", "TAG=abc1234"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
    assert re.search(r"sidreasoner compile --config demo .*--registry r\.test/x --tag abc1234", out), out


@pytest.mark.parametrize("stage", stage_packages())
def test_image_installs_what_its_stage_imports(plan, stage):
    build = stage_builds(plan)[stage]
    lock = image_lock(build)
    missing = []
    for module, files in sorted(third_party_imports(stage).items()):
        dists = distributions(module)
        if not dists & lock.keys():
            where = ", ".join(sorted(str(f.relative_to(ROOT)) for f in files))
            missing.append(f"{module} (distribution {sorted(dists) or 'unknown'}; imported in {where})")
    assert not missing, (f"{build.tag} ({base_dockerfile(build).name}) lacks what {stage} imports:\n  "
                         + "\n  ".join(missing))


def test_import_scan_sees_lazy_and_guarded_imports():
    # evaluate reaches vLLM only inside functions of components/common/constrained_vllm.py.
    imports = third_party_imports("evaluate")
    assert "vllm" in {m.split(".")[0] for m in imports}
    assert distributions("google.cloud.storage") == {"google-cloud-storage"}


@pytest.mark.parametrize("stage", DECLARED_STAGES)
def test_every_stage_image_has_the_kfp_executor(plan, stage):
    # The component runs `python3 -m kfp.dsl.executor_main` (install_kfp_package=False).
    assert "kfp" in image_lock(stage_builds(plan)[stage])


def test_bases_hold_their_stacks(plan):
    builds = stage_builds(plan)
    for stage, build in builds.items():
        lock = image_lock(build)
        if base_dockerfile(build).name == "base-cuda.Dockerfile":
            assert set(CUDA_STACK) <= lock.keys(), stage
            assert "+" not in lock["torch"].version and any(n.startswith("nvidia-") for n in lock), stage
        else:
            assert set(CPU_STACK) <= lock.keys(), stage
            assert lock["torch"].version.endswith("+cpu") and not any(n.startswith("nvidia-") for n in lock), stage


def _pyproject_pins(*extras: str) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for e in extras for s in project["optional-dependencies"][e]]
    return {normalize(name): version for name, version in (s.split("==") for s in specs)}


@pytest.mark.parametrize("lock, extras", [("image-cpu.lock.txt", ()), ("image-cuda.lock.txt", ("gpu",))])
def test_locks_are_current_with_pyproject(lock, extras):
    pins = read_lock(REQUIREMENTS / lock)
    stale = {name: (version, pins[name].version if name in pins else None)
             for name, version in _pyproject_pins(*extras).items()
             if name not in pins or pins[name].version.split("+")[0] != version}
    assert not stale, f"{lock} is stale (pyproject pin, lock): {stale}; run `make lock-images`"


def test_cpu_image_runs_what_the_tests_run():
    dev = {normalize(line.split("==")[0]): line.split("==")[1].strip()
           for line in (REQUIREMENTS / "lock-cpu.txt").read_text().splitlines() if "==" in line}
    image = read_lock(REQUIREMENTS / "image-cpu.lock.txt")
    differ = {n: (dev[n], pin.version) for n, pin in image.items() if n in dev and dev[n] != pin.version}
    assert not differ, f"CPU image lock vs dev lock-cpu.txt: {differ}"


@pytest.mark.parametrize("lock", LOCKS, ids=[p.name for p in LOCKS])
def test_locks_hash_every_file(lock):
    pins = read_lock(lock)
    assert pins
    assert not [name for name, pin in pins.items() if not pin.hashes], f"{lock.name}: requirements without a hash"


DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.stem for p in DOCKERFILES])
def test_dockerfile_installs_only_hash_checked_locks(dockerfile):
    for instruction, args in instructions(dockerfile):
        if instruction != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            if re.search(r"\bpip install\b", command):
                if " -r " in command:
                    assert "--require-hashes" in command and "--no-deps" in command, command
                else:  # our own package, whose dependencies are all in the locks
                    assert "--no-deps" in command and "/tmp/sidreasoner" in command, command
    for lock in copied_locks(dockerfile):
        assert lock.is_file(), f"{dockerfile.name} copies {lock.relative_to(ROOT)}, which does not exist"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.stem for p in DOCKERFILES])
def test_dockerfile_runs_as_numeric_non_root_user(dockerfile):
    users = [args for instruction, args in instructions(dockerfile) if instruction == "USER"]
    if dockerfile.stem.startswith(("base-", "mlflow-")):
        assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users
    else:  # a stage image keeps its base's user
        assert not users, f"{dockerfile.name} switches user: {users}"


def test_stage_dockerfiles_record_the_commit(plan):
    for stage, build in stage_builds(plan).items():
        text = " ".join(args for _, args in instructions(build.dockerfile))
        assert "ARG GIT_COMMIT" in build.dockerfile.read_text()
        assert 'org.opencontainers.image.revision="${GIT_COMMIT}"' in text, stage
        assert "SIDREASONER_GIT_COMMIT=${GIT_COMMIT}" in text, stage
        # The Dockerfile's default base is the one `make images` builds it on.
        default_base = re.search(r"ARG BASE=\S+/(base-\w+):", build.dockerfile.read_text()).group(1)
        assert base_dockerfile(build).stem == default_base, stage


def test_build_context_admits_what_dockerfiles_copy():
    allowed = {line[1:].strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for dockerfile in DOCKERFILES:
        for instruction, args in instructions(dockerfile):
            if instruction == "COPY":
                for src in args.split()[:-1]:
                    assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: no such path"
                    assert Path(src).parts[0] in allowed, f"{dockerfile.name}: COPY {src} is excluded by .dockerignore"


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
    for stage in DECLARED_STAGES:
        assert f"r.test/x/{stage.replace('_', '-')}:t" in out
