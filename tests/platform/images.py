"""Static views of the images for the platform tests: what `make images` would build and what each
Dockerfile does. Nothing here needs Docker or the network: the build plan comes from `make -n`,
the rest from reading files. What each stage image holds is pipeline.images' to say."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
REQUIREMENTS = ROOT / "requirements"


@dataclass(frozen=True)
class Build:
    """One `docker build` of the `make images` plan."""

    context: str
    """As given to docker build, relative to the repository root."""
    dockerfile: str | None
    """--file, when not the context's Dockerfile."""
    tag: str
    prepared_by: str | None
    """The command run just before it (a stage's context assembly)."""


def make_images_plan(registry: str, tag: str) -> list[Build]:
    """The builds `make images REGISTRY=registry TAG=tag` runs, read from `make -n` (no engine needed)."""
    out = subprocess.run(["make", "-n", "--no-print-directory", "images", f"REGISTRY={registry}", f"TAG={tag}",
                          "GIT_COMMIT=0123456789abcdef"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    commands = [line.strip() for line in out.replace("\\\n", " ").splitlines() if line.strip()]
    builds = []
    for previous, command in zip([None, *commands], commands):
        if not command.startswith("docker build "):
            continue
        args = shlex.split(command)
        dockerfile = args[args.index("--file") + 1] if "--file" in args else None
        builds.append(Build(args[-1], dockerfile, args[args.index("--tag") + 1], previous))
    return builds


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile's text, continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def copy_repo(target: Path) -> Path:
    """A copy of what the images are made from (code, locks, Dockerfiles, pyproject, README)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("components", "pipeline", "docker", "requirements"):
        shutil.copytree(ROOT / folder, target / folder, ignore=ignore)
    for file in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / file, target / file)
    return target
