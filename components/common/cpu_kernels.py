"""Which CPU kernels torch runs (``run.cpu_kernels``): the host's fastest, or the same bits on
every x86-64 host.

A seeded CPU run repeats itself digit for digit on one machine, yet not on another: three
libraries under torch pick their code path by the host CPU, and the paths round differently.
MKL's GEMM (torch's CPU matmul) blocks its sums by the instruction set and the thread count;
ATen's vectorised kernels (softmax, layer norm, reductions) sum in 256- or 512-bit lanes; oneDNN
likewise. A 2-layer model trained for thousands of steps turns those last bits into other
checkpoints and other hits: the demo's thinking mode scored 0.5605 HR@10 on valid in one session
and 0.3848 in a later one, same code, packages and data (docs/results.md).

``reproducible`` (the demo profile's) pins all three to their AVX2 code path, which every x86-64
CPU of the last decade has, MKL to its strict mode (GEMM's bits do not depend on the thread
count) and ATen to two threads (its reductions are split by thread). The whole demo pipeline then
trains the same weights, digit for digit, on this AVX-512 host with two threads as with MKL
dispatching as on an AVX2-only CPU on one thread, in 469 s against 455 s on native kernels
(docs/results.md); ``tests/common/test_cpu_kernels`` shows it on a small model, another host
emulated.
``native`` (the default, and the GPU profiles', where the CPU does no arithmetic that matters)
lets each library pick the host's fastest path. A CPU without the AVX2 paths (ARM) runs native
kernels with a warning, and the stage records what ran (MLflow tag ``sidreasoner.cpu_kernels``).

Each library reads its variable once, when it first runs, so the pin has to be in the
environment before torch's first operation. A stage process (the CLI, a kfp task) imports torch
only inside the stage's work, after :func:`apply` has set it; a process that has already loaded
torch without it (a notebook, a test process) gets an error rather than a run that says it is
reproducible and is not. Child processes (training launchers, decoding servers) inherit it.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

from components.common.config import ConfigError, CpuKernels

log = logging.getLogger(__name__)

#: Intra-op threads of ``reproducible`` kernels.
THREADS = 2
#: The environment of ``reproducible`` kernels.
PINNED_ENV = {
    # MKL's conditional numerical reproducibility: the AVX2 branch on any CPU that has it;
    # STRICT: GEMM's result does not depend on the number of threads either.
    "MKL_CBWR": "AVX2,STRICT",
    # ATen's vectorised CPU kernels: 256-bit lanes on AVX-512 hosts too.
    "ATEN_CPU_CAPABILITY": "avx2",
    # oneDNN's kernels (torch's mkldnn ops), the same instruction set.
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # ATen splits its reductions (a loss over the vocabulary, a gradient's sum) by thread, so the
    # thread count is part of the arithmetic: two, the laptop-class machine the CPU profiles are
    # sized for, on any number of cores.
    "OMP_NUM_THREADS": str(THREADS),
}


def apply(mode: CpuKernels) -> CpuKernels:
    """Put ``mode``'s kernels in force for this process and its children (before torch runs);
    returns the kernels in force, which the stage records."""
    if mode == "native":
        return mode
    if not pinnable():
        # the demo's default, so a laptop without these code paths (an ARM Mac) still runs it
        log.warning("run.cpu_kernels: reproducible pins the x86-64 AVX2 code paths, which this CPU (%s) lacks; "
                    "running on native kernels: numbers may differ from a reproducible run's", platform.machine())
        return "native"
    if "torch" not in sys.modules:
        os.environ.update(PINNED_ENV)
        return mode
    # torch is loaded: the pin holds only if the environment had it before torch started
    differing = {name: os.environ.get(name) for name, value in PINNED_ENV.items() if os.environ.get(name) != value}
    torch = sys.modules["torch"]  # loaded by then; no import here: stages without torch share this module
    capability, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    if differing or capability != "AVX2" or threads != THREADS:
        raise ConfigError(
            "run.cpu_kernels: reproducible needs its environment before torch loads, and this process loaded "
            f"torch without it ({', '.join(f'{k}={v}' for k, v in differing.items()) or 'environment as pinned'}; "
            f"ATen kernels {capability}, {threads} threads): start the process with "
            f"{' '.join(f'{k}={v}' for k, v in PINNED_ENV.items())}, or use run.cpu_kernels=native")
    return mode


def pinnable() -> bool:
    """Whether this CPU has the code paths ``reproducible`` pins (x86-64 with AVX2)."""
    return platform.machine().lower() in ("x86_64", "amd64") and _has_avx2()


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: MKL and ATen fall back by themselves
        return True
