"""``run.cpu_kernels`` (components/common/cpu_kernels.py): with ``reproducible``, a seeded CPU
training gives the same bits whatever the host's instruction set and thread count.

Another host is emulated on this one: ``MKL_ENABLE_INSTRUCTIONS=AVX2`` makes MKL dispatch as on a
CPU without AVX-512 and one thread as on a one-core machine. Each training runs in a fresh
process, since the kernels are chosen when torch first runs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from components.common import cpu_kernels, storage
from components.common.config import ConfigError
from components.common.stage import StageContext

REPO = Path(__file__).resolve().parents[2]

# A seeded training of a small transformer block (matmuls large enough for MKL to use threads,
# softmax, layer norm, AdamW); prints the kernels ATen ran and a digest of the trained weights.
TRAIN = """
import hashlib, os, sys
if sys.argv[2] == "one-core":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from components.common import cpu_kernels
cpu_kernels.apply(sys.argv[1])
import torch
torch.manual_seed(0)
block = torch.nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True)
head = torch.nn.Linear(64, 2048)
params = [*block.parameters(), *head.parameters()]
optimizer = torch.optim.AdamW(params, lr=1e-3)
x, y = torch.randn(32, 24, 64), torch.randint(0, 2048, (32 * 24,))
for _ in range(20):
    loss = torch.nn.functional.cross_entropy(head(block(x)).reshape(-1, 2048), y)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in params)).hexdigest()
print(torch.backends.cpu.get_cpu_capability(), digest)
"""


def unpinned_environ() -> dict[str, str]:
    """This process's environment without the pin, as a fresh shell's."""
    return {k: v for k, v in os.environ.items() if k not in cpu_kernels.PINNED_ENV}


def train(mode: str, other_host: bool = False, **env: str) -> tuple[str, str]:
    """(ATen's kernels, digest of the weights) of TRAIN in a fresh process; ``other_host``: as on
    a one-core CPU without AVX-512 (MKL told to dispatch as there, the process held to one core)."""
    if other_host:
        env = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", **env}
    done = subprocess.run([sys.executable, "-c", TRAIN, mode, "one-core" if other_host else "all-cores"], cwd=REPO,
                          env={**unpinned_environ(), **env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    capability, digest = done.stdout.split()
    return capability, digest


def host_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


X86 = pytest.mark.skipif(not cpu_kernels.pinnable() or not hasattr(os, "sched_setaffinity"),
                         reason="pins x86-64 AVX2 code paths; one core by Linux's CPU affinity")


@X86
def test_reproducible_kernels_train_the_same_weights_on_another_host():
    here, other = train("reproducible"), train("reproducible", other_host=True)
    assert here[0] == other[0] == "AVX2"
    assert here[1] == other[1]
    # the emulated host does take other code paths: without the pin its weights differ, unless
    # this machine is itself a one-core CPU without AVX-512
    native_here, native_other = train("native"), train("native", other_host=True, ATEN_CPU_CAPABILITY="avx2")
    assert native_here[0] == host_capability() and native_other[0] == "AVX2"
    elsewhere = host_capability() == "AVX512" or len(os.sched_getaffinity(0)) > 1
    assert (native_here[1] != native_other[1]) == elsewhere


def test_native_leaves_the_environment_alone(monkeypatch):
    for name in cpu_kernels.PINNED_ENV:
        monkeypatch.delenv(name, raising=False)
    assert cpu_kernels.apply("native") == "native"
    assert not set(cpu_kernels.PINNED_ENV) & set(os.environ)


def test_a_process_that_loaded_torch_unpinned_cannot_claim_reproducible_kernels(monkeypatch):
    import torch  # noqa: F401  (this test process has torch loaded, as a notebook would)

    for name in cpu_kernels.PINNED_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="run.cpu_kernels: reproducible needs its environment before torch loads"
                                          ".*MKL_CBWR=AVX2,STRICT ATEN_CPU_CAPABILITY=avx2"):
        cpu_kernels.apply("reproducible")


def test_a_cpu_without_the_pinned_code_paths_runs_native_kernels_and_says_so(monkeypatch, caplog):
    for name in cpu_kernels.PINNED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpu_kernels.apply("reproducible") == "native"
    assert "this CPU (aarch64) lacks; running on native kernels" in caplog.text
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu_kernels, "_has_avx2", lambda: False)
    assert cpu_kernels.apply("reproducible") == "native"
    assert not set(cpu_kernels.PINNED_ENV) & set(os.environ)


def report_kernels(cfg, ctx, inputs, outputs, tracker):
    """The toy stage's work: the kernels its torch runs, and those of a child process."""
    import torch

    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    report = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
              "child": child, "env": {name: os.environ.get(name) for name in cpu_kernels.PINNED_ENV},
              "recorded": ctx.cpu_kernels}
    return {"stats": {"digest": storage.write_json(outputs["stats"], report)}}


STAGE_RUN = """
import sys
from components.common import artifacts
from components.common.config import Section
from components.common.stage import Stage, StageContext
stage = Stage(name="toy", config=Section, run="tests.common.test_cpu_kernels:report_kernels",
              description="reports its kernels", outputs={"stats": artifacts.STATS})
ctx = StageContext.model_validate_json(sys.argv[1])
stage.execute(Section(), ctx, {}, {"stats": sys.argv[2]})
"""


@X86
def test_a_stage_puts_the_run_kernels_in_force_before_its_work(tmp_path):
    reports = {}
    for mode in ("reproducible", "native"):
        ctx = StageContext(run_key=f"local-{mode}", pipeline_name="p", profile="test", config_hash="0" * 16,
                           tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="kernels",
                           cache_uri=str(tmp_path / "cache"), seed=1, cpu_kernels=mode, final_stage="toy")
        out = tmp_path / mode / "stats.json"
        done = subprocess.run([sys.executable, "-c", STAGE_RUN, ctx.model_dump_json(), str(out)], cwd=REPO,
                              env=unpinned_environ(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        reports[mode] = json.loads(out.read_text())
    assert reports["reproducible"] == {"capability": "AVX2", "threads": cpu_kernels.THREADS, "child": "AVX2",
                                       "env": cpu_kernels.PINNED_ENV, "recorded": "reproducible"}
    assert reports["native"]["capability"] == reports["native"]["child"] == host_capability()
    assert reports["native"]["env"] == dict.fromkeys(cpu_kernels.PINNED_ENV)
    assert reports["native"]["recorded"] == "native"
