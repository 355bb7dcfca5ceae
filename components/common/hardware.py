"""The GPU node a stage runs on: the NVIDIA driver check every GPU stage makes before any work,
what the run record says about the node (driver, GPU models, library versions), and a stage's
peak GPU memory.

Everything is read through NVML (``libnvidia-ml.so.1``, which the NVIDIA container runtime and
GKE's device plugin mount into every GPU pod) with ctypes, ``nvidia-smi`` being the fallback: no
torch import, no pynvml package (only some stage images carry it), and it works exactly where
CUDA cannot initialise. A driver too old for the image's CUDA libraries is such a case: torch then
reports no GPU at all (or fails deep inside a kernel launch), which says nothing about the cause.

NVML's memory reading is per device and counts every process on it, so a stage's peak includes
its ``accelerate launch`` training processes and vLLM's engine processes, which the stage process
itself cannot see through torch.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from components.common.errors import ExpectedError

log = logging.getLogger(__name__)

#: CUDA major version of the GPU images' user-space libraries (requirements/image-cuda.lock.txt:
#: nvidia-cuda-runtime 13.0, the cu13 build of torch 2.13.0 that vLLM 0.31.0 requires).
IMAGE_CUDA_MAJOR = 13
#: Oldest NVIDIA driver branch that runs CUDA 13 user-space libraries (NVIDIA's CUDA
#: minor-version compatibility: any 13.x runtime on a >= 580 driver). Stated for the cluster in
#: manifests/base/cluster-facts.yaml (``gpu-driver-min-version``).
MIN_DRIVER_MAJOR = 580
#: Libraries whose versions the run record names (those installed in the stage's image).
LIBRARIES = ("torch", "transformers", "trl", "accelerate", "deepspeed", "vllm", "triton", "nvidia-cuda-runtime",
             "nvidia-nccl-cu13")

_MIB = 1024 * 1024


class DriverError(ExpectedError):
    """The node's NVIDIA driver cannot run the image's CUDA libraries."""


@dataclass(frozen=True)
class NodeGpus:
    """The NVIDIA driver and the GPUs visible to this process."""

    driver: str
    """Driver version, e.g. ``580.65.06``."""
    cuda: str | None
    """Newest CUDA version the driver supports, e.g. ``13.0`` (None when not reported)."""
    names: tuple[str, ...] = ()
    memory_mib: tuple[int, ...] = ()
    """Total memory of each GPU."""

    @property
    def driver_major(self) -> int:
        return int(self.driver.split(".", 1)[0])

    def describe(self) -> str:
        """e.g. ``2 x NVIDIA H100 80GB HBM3``."""
        if not self.names:
            return "no GPU"
        kinds = sorted(set(self.names))
        return ", ".join(f"{self.names.count(name)} x {name}" for name in kinds)


# ----------------------------------------------------------------------------------------------
# Reading the node: NVML, then nvidia-smi
# ----------------------------------------------------------------------------------------------


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class Nvml:
    """The few NVML calls used here, on a loaded ``libnvidia-ml`` (or anything with its C API)."""

    def __init__(self, lib: Any):
        self.lib = lib

    @classmethod
    def load(cls) -> Nvml | None:
        """NVML of the installed driver, initialised; None without a driver."""
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            return None
        nvml = cls(lib)
        return nvml if nvml._ok(lib.nvmlInit_v2()) else None

    @staticmethod
    def _ok(status: int) -> bool:
        return status == 0  # NVML_SUCCESS

    def shutdown(self) -> None:
        self.lib.nvmlShutdown()

    def _string(self, call: Callable[..., int], *args: Any) -> str | None:
        buffer = ctypes.create_string_buffer(96)
        return buffer.value.decode() if self._ok(call(*args, buffer, ctypes.c_uint(len(buffer)))) else None

    def driver(self) -> str | None:
        return self._string(self.lib.nvmlSystemGetDriverVersion)

    def cuda(self) -> str | None:
        version = ctypes.c_int()
        if not self._ok(self.lib.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(version))):
            return None
        return f"{version.value // 1000}.{version.value % 1000 // 10}"

    def handles(self) -> list[Any]:
        count = ctypes.c_uint()
        if not self._ok(self.lib.nvmlDeviceGetCount_v2(ctypes.byref(count))):
            return []
        handles = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            if self._ok(self.lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle))):
                handles.append(handle)
        return handles

    def name(self, handle: Any) -> str:
        return self._string(self.lib.nvmlDeviceGetName, handle) or "unknown GPU"

    def memory(self, handle: Any) -> _NvmlMemory | None:
        info = _NvmlMemory()
        return info if self._ok(self.lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(info))) else None

    def node(self) -> NodeGpus | None:
        driver = self.driver()
        if driver is None:
            return None
        handles = self.handles()
        memories = [self.memory(h) for h in handles]
        return NodeGpus(driver=driver, cuda=self.cuda(), names=tuple(self.name(h) for h in handles),
                        memory_mib=tuple(m.total // _MIB if m else 0 for m in memories))


def _run_nvidia_smi() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def parse_nvidia_smi(text: str) -> NodeGpus | None:
    """``nvidia-smi --query-gpu=driver_version,name,memory.total --format=csv,noheader,nounits``."""
    rows = [[cell.strip() for cell in line.split(",")] for line in text.splitlines() if line.strip()]
    if not rows:
        return None
    return NodeGpus(driver=rows[0][0], cuda=None, names=tuple(row[1] for row in rows),
                    memory_mib=tuple(int(float(row[2])) for row in rows))


def node_gpus(nvml: Callable[[], Nvml | None] | None = None,
              nvidia_smi: Callable[[], str | None] | None = None) -> NodeGpus | None:
    """The driver and GPUs of this node (NVML, else nvidia-smi); None where there is no NVIDIA
    driver. ``nvml`` / ``nvidia_smi`` replace the readers (default: :meth:`Nvml.load`, running
    nvidia-smi)."""
    library = (nvml or Nvml.load)()
    if library is not None:
        try:
            found = library.node()
        finally:
            library.shutdown()
        if found is not None:
            return found
    text = (nvidia_smi or _run_nvidia_smi)()
    return parse_nvidia_smi(text) if text else None


def cuda_visible_devices(indices: Sequence[int], environ: Mapping[str, str] | None = None) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a child process that should use ``indices`` of the GPUs this
    process sees. Indices count this process's visible GPUs: where ``CUDA_VISIBLE_DEVICES`` is
    already set (a GPU subset of a shared machine: "2,3"), index 0 is device 2, not device 0."""
    environ = os.environ if environ is None else environ
    visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        return ",".join(str(i) for i in indices)
    if any(i >= len(visible) for i in indices):
        raise ValueError(f"GPU indices {list(indices)} but CUDA_VISIBLE_DEVICES={','.join(visible)} shows "
                         f"{len(visible)} GPU(s)")
    return ",".join(visible[i] for i in indices)


def check_driver(gpus: NodeGpus | None) -> None:
    """Refuse a node whose driver cannot run the image's CUDA libraries, naming both versions.
    No driver at all is a CPU machine: nothing to check (stages refuse GPU-only settings there)."""
    if gpus is None:
        return
    try:
        major = gpus.driver_major
    except ValueError:
        log.warning("NVIDIA driver version %r not understood; not checked", gpus.driver)
        return
    if major < MIN_DRIVER_MAJOR:
        supports = f", which supports CUDA up to {gpus.cuda}," if gpus.cuda else ""
        raise DriverError(
            f"NVIDIA driver {gpus.driver}{supports} on this node ({gpus.describe()}) is too old: the image's CUDA "
            f"{IMAGE_CUDA_MAJOR} libraries need driver >= {MIN_DRIVER_MAJOR}. Run GPU stages on a node pool with "
            "a newer driver (manifests/base/cluster-facts.yaml: gpu-driver-min-version; on GKE, create the pool "
            "with gpu-driver-version=latest)")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names`` (those missing are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def environment(gpus: NodeGpus | None = None) -> dict[str, Any]:
    """What the run record says about the machine: libraries, driver, GPUs."""
    gpus = gpus if gpus is not None else node_gpus()
    return {"libraries": library_versions(),
            "nvidia_driver": gpus.driver if gpus else None, "cuda_driver": gpus.cuda if gpus else None,
            "gpus": list(gpus.names) if gpus else [], "gpu_memory_mib": list(gpus.memory_mib) if gpus else []}


# ----------------------------------------------------------------------------------------------
# A GPU stage: driver check, then peak memory while it runs
# ----------------------------------------------------------------------------------------------


@dataclass
class GpuUsage:
    """Peak device memory in use on each GPU while a stage ran (NVML, every process)."""

    gpus: NodeGpus | None = None
    start_mib: list[int] = field(default_factory=list)
    peak_mib: list[int] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        """Flat values for the stage's stats metadata (empty on a machine without NVIDIA GPUs)."""
        if self.gpus is None:
            return {}
        out: dict[str, Any] = {"nvidia_driver": self.gpus.driver, "gpus": self.gpus.describe()}
        if self.peak_mib:
            out["gpu_peak_memory_mib"] = max(self.peak_mib)
            out["gpu_memory_at_start_mib"] = max(self.start_mib)
        return out


def _sample(nvml: Nvml, handles: list[Any]) -> list[int]:
    used = []
    for handle in handles:
        info = nvml.memory(handle)
        used.append(info.used // _MIB if info else 0)
    return used


@contextmanager
def gpu_stage(interval_s: float = 0.5, nvml: Callable[[], Nvml | None] | None = None,
              nvidia_smi: Callable[[], str | None] | None = None) -> Iterator[GpuUsage]:
    """Check the driver (:func:`check_driver`), then sample each GPU's memory in use every
    ``interval_s`` until the block ends; the yielded :class:`GpuUsage` holds the peaks (readers
    as in :func:`node_gpus`)."""
    library = (nvml or Nvml.load)()
    usage = GpuUsage()
    if library is None:
        usage.gpus = node_gpus(lambda: None, nvidia_smi)
        check_driver(usage.gpus)
        yield usage
        return
    stop = threading.Event()
    sampler = None
    try:
        usage.gpus = library.node()
        check_driver(usage.gpus)
        handles = library.handles()
        usage.start_mib = _sample(library, handles)
        usage.peak_mib = list(usage.start_mib)

        def sample() -> None:
            while not stop.wait(interval_s):
                usage.peak_mib = [max(a, b) for a, b in zip(usage.peak_mib, _sample(library, handles))]

        if handles:
            sampler = threading.Thread(target=sample, name="gpu-memory", daemon=True)
            sampler.start()
        yield usage
    finally:
        stop.set()
        if sampler is not None:
            sampler.join()
            usage.peak_mib = [max(a, b) for a, b in zip(usage.peak_mib, _sample(library, handles))]
        library.shutdown()
