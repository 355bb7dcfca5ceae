"""Imported at start-up by the Python processes that tests/training/test_gpu_paths.py launches
through ``accelerate launch`` (this folder heads their PYTHONPATH).

On a CPU, DeepSpeed's process group JIT-compiles a shared-memory all-reduce kernel
(``deepspeed_shm_comm``, ninja and g++) into ~/.cache/torch_extensions the first time it comes up:
0.5-3 min on two cores, and forever where a killed build left its lock file behind (torch's
``FileBaton`` waits for it to vanish). The CUDA accelerator never builds that kernel and one
process never reduces across processes, so these processes skip it: their process group is plain
gloo, everything else is DeepSpeed as a GPU node runs it.
"""

import importlib

# by name: the package's attribute ``deepspeed.comm.torch`` is torch itself, not this module
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
