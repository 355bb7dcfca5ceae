"""The stage images: what each one holds, its hash lock and its build context (README "Images").

A stage is a package under ``components/`` with a ``__main__.py`` (its CLI). Its image holds

* its own package, whole (code and data files);
* the modules of ours that its code reaches through imports -- the static import graph, counting
  imports inside functions and under ``try`` too, ``importlib.import_module("...")`` and
  ``-m module`` command lines, and ``"components.x.y:func"`` entry strings -- with their
  packages' ``__init__.py`` and the data folders they name (``Path(__file__).parent /
  "deepspeed"``); nothing else of ``components/`` or ``pipeline/``;
* only the third-party distributions those modules import, the kfp executor's (the component
  command is ``python3 -m kfp.dsl.executor_main``), and everything they require: the
  ``requirements/stages/<stage>.lock.txt`` this module derives from the full lock of the stage's
  flavour, with its hashes.

Its build context, ``build/images/<stage>/``, holds exactly that: a Dockerfile (the flavour's
template in ``docker/`` with the stage's name), a minimal ``pyproject.toml`` installing the
code, the build-backend lock and the stage lock. A change to one stage's code changes only its
context, so only its image is rebuilt.

    python -m pipeline.images stages                 # the stages, one a line
    python -m pipeline.images locks [--check]        # write (or check) requirements/stages/*.lock.txt
    python -m pipeline.images context STAGE... [--out build/images]   # assemble contexts, print digests
    python -m pipeline.images sizes [--find-links DIR]   # measure the locked files (pip download)

Only the standard library is imported, so the Makefile runs this with any Python 3.11; the lock
derivation reads the installed distributions (``importlib.metadata``) to map import names to
distributions and so runs in the dev venv (``make lock-images``).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Our top-level packages: imports of them are followed, not looked up in a lock.
LOCAL_PACKAGES = ("components", "pipeline")

#: Every image runs the component command ``python3 -m kfp.dsl.executor_main``.
EXECUTOR_MODULE = "kfp.dsl.executor_main"
EXECUTOR_COMMAND = f"python3 -m {EXECUTOR_MODULE} (the component command)"

#: What a module of ours needs at run time without importing it: module -> import names.
RUNTIME_IMPORTS: dict[str, tuple[str, ...]] = {
    # transformers' Trainer imports deepspeed when TrainJob.deepspeed names a ZeRO config
    # (launch.strategy zero2/zero3).
    "components.common.training.launch": ("deepspeed",),
}

#: The full hash lock each flavour's stage locks are taken from (written by pip-compile).
FULL_LOCKS = {"cpu": "requirements/image-cpu.lock.txt", "cuda": "requirements/image-cuda.lock.txt"}
BUILD_LOCK = "requirements/image-build.lock.txt"
STAGE_LOCKS = "requirements/stages"
#: Compressed size of each locked file the images install, measured by ``sizes``.
SIZES = "requirements/stages/sizes.json"
TEMPLATES = {"cpu": "docker/stage-cpu.Dockerfile", "cuda": "docker/stage-cuda.Dockerfile"}
#: The Dockerfile template's line that the context's Dockerfile gives the stage's name.
STAGE_ARG = "ARG STAGE"

#: Names in a context (the Dockerfile templates COPY these).
CONTEXT_BUILD_LOCK = "requirements/image-build.lock.txt"
CONTEXT_STAGE_LOCK = "requirements/stage.lock.txt"

README = "README.md"
SIZE_TABLE_START, SIZE_TABLE_END = "<!-- image sizes: python -m pipeline.images sizes -->", "<!-- end image sizes -->"


class ImageError(Exception):
    """A stage's image cannot be described: the message names the file and what to do."""


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------


def stages(root: Path = ROOT) -> list[str]:
    """Every stage: the packages under ``components/`` with a ``__main__.py`` (a stage's CLI)."""
    return sorted(p.parent.name for p in (root / "components").glob("*/__main__.py"))


def image_flavour(stage: str, root: Path = ROOT) -> str:
    """``"cpu"`` or ``"cuda"``: the lock and Dockerfile template the stage's image is built from,
    as the stage declares it (``image=`` of ``STAGE = Stage(...)`` in its ``__init__.py``; the
    default is ``"cpu"``). Read from the source, so that this tool needs no installed package."""
    path = root / "components" / stage / "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Stage":
            for keyword in node.keywords:
                if keyword.arg == "image":
                    if not isinstance(keyword.value, ast.Constant) or keyword.value.value not in ("cpu", "cuda"):
                        raise ImageError(f"{path}: Stage(image=...) must be the literal 'cpu' or 'cuda'")
                    return keyword.value.value
            return "cpu"
    raise ImageError(f"{path}: no `STAGE = Stage(...)` declaration")


# ----------------------------------------------------------------------------------------------
# What a stage's code reaches
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    """What the image of a stage holds of ours, and what that code imports from elsewhere."""

    files: frozenset[str]
    """Our files (repository-relative POSIX paths)."""
    imports: Mapping[str, frozenset[str]]
    """Third-party module -> the files of ours importing it."""


def _is_stage_package(path: Path) -> bool:
    return path.parent.name == "components" and (path / "__main__.py").is_file()


def _package_files(folder: Path) -> list[Path]:
    """The files of a folder an image holds: everything but bytecode caches."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix != ".pyc")


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_files(root: Path, module: str) -> list[Path]:
    """The files importing ``module`` runs: each enclosing package's ``__init__.py`` and the module
    (the names that are not modules, ``from a import SomeClass``, resolve to nothing)."""
    files = []
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        path = root.joinpath(*parts[:depth])
        if path.with_suffix(".py").is_file():
            files.append(path.with_suffix(".py"))
        elif (path / "__init__.py").is_file():
            files.append(path / "__init__.py")
        else:
            break
    return files


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


#: Calls whose first argument, a string, is a module they load: ``importlib.import_module("x")``,
#: ``importlib.resources.files("x")``.
_IMPORTING_CALLS = ("import_module", "resources.files")


def _calls_importer(func: ast.expr) -> bool:
    name = _dotted(func)
    return any(name == call or name.endswith("." + call) for call in _IMPORTING_CALLS)


#: A string naming one of our modules, alone or as an entry point: "components.align_sft.sft:train_sft".
_OUR_ENTRY = re.compile(r"(?:%s)(?:\.\w+)+(?::\w+)?" % "|".join(LOCAL_PACKAGES))


def _references(root: Path, path: Path) -> tuple[set[str], set[Path]]:
    """What one file of ours needs: the modules it imports or names as modules (dotted, relative
    imports resolved; ``from a import b`` gives ``a.b`` too, since b may be a module), and the
    data entries beside it that it names (a string equal to a sibling folder's or file's name)."""
    module_name = _module_name(root, path)
    package = module_name if path.name == "__init__.py" else module_name.rsplit(".", 1)[0]
    modules, strings = _scan(path.read_text(), str(path.relative_to(root)), package)
    siblings = {p.name: p for p in path.parent.iterdir()
                if p.suffix != ".py" and p.name != "__pycache__" and not _is_stage_package(p)}
    return set(modules), {siblings[name] for name in strings & siblings.keys()}


@cache
def _scan(source: str, filename: str, package: str) -> tuple[frozenset[str], frozenset[str]]:
    """The modules a source file imports or names, and its other string constants (cached by
    content: every stage's scan reads the shared modules)."""
    modules: set[str] = set()
    strings: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(parent + ([node.module] if node.module else []))
            else:
                module = node.module
            modules.add(module)
            modules.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (isinstance(node, ast.Call) and _calls_importer(node.func) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            modules.add(node.args[0].value)  # importlib.import_module("x"), importlib.resources.files("x")
        elif isinstance(node, (ast.List, ast.Tuple)):  # a command line [..., "-m", "module", ...]
            values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            modules.update(module for flag, module in zip(values, values[1:])
                           if flag == "-m" and isinstance(module, str))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _OUR_ENTRY.fullmatch(node.value):  # "components.align_sft.sft:train_sft"
                modules.add(node.value.split(":")[0])
            else:
                strings.add(node.value)
    return frozenset(modules), frozenset(strings)


def reach(stage: str, root: Path = ROOT) -> Reach:
    """The files of ours the image of ``stage`` holds and the third-party modules they import."""
    todo = _package_files(root / "components" / stage) + _module_files(root, "components")
    files: set[Path] = set()
    imports: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in files:
            continue
        files.add(path)
        if path.suffix != ".py":
            continue
        relative = path.relative_to(root).as_posix()
        modules, data = _references(root, path)
        modules.update(RUNTIME_IMPORTS.get(_module_name(root, path), ()))
        for module in modules:
            top = module.split(".")[0]
            if top in LOCAL_PACKAGES:
                todo += _module_files(root, module)
            elif top not in sys.stdlib_module_names:
                imports.setdefault(module, set()).add(relative)
        for entry in data:
            todo += _package_files(entry) if entry.is_dir() else [entry]
    return Reach(frozenset(p.relative_to(root).as_posix() for p in files),
                 {module: frozenset(where) for module, where in imports.items()})


# ----------------------------------------------------------------------------------------------
# Locks
# ----------------------------------------------------------------------------------------------


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    """One requirement of a hash lock."""

    requirement: str
    """As written: ``torch==2.13.0+cpu``."""
    hashes: tuple[str, ...]
    """sha256 of every file the lock accepts for it."""
    via: frozenset[str]
    """The locked distributions requiring it (normalized), from its ``# via`` comment."""

    @property
    def version(self) -> str:
        return self.requirement.split("==", 1)[1]


_REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_DISTRIBUTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def read_lock(path: Path) -> dict[str, Pin]:
    """A pip-compile hash lock (or a stage lock): normalized name -> its pin."""
    entries: dict[str, tuple[str, list[str], set[str]]] = {}
    current = None
    in_via = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if requirement := _REQUIREMENT.match(line):
            current, in_via = (requirement.group(0), [], set()), False
            entries[normalize(requirement.group(1))] = current
        elif current and (digest := re.match(r"\s+--hash=sha256:([0-9a-f]{64})", line)):
            current[1].append(digest.group(1))
        elif current and (line.startswith("    # via") or (in_via and line.startswith("    #   "))):
            in_via = True
            entry = stripped.removeprefix("# via").removeprefix("#").strip()
            if _DISTRIBUTION.fullmatch(entry):  # not "-c file", "sidreasoner (pyproject.toml)", ...
                current[2].add(normalize(entry))
        elif stripped and not stripped.startswith("#"):
            raise ImageError(f"{path}:{number}: not a line of a hash lock: {line!r}")
    return {name: Pin(requirement, tuple(hashes), frozenset(via)) for name, (requirement, hashes, via) in entries.items()}


def requirement_closure(roots: Iterable[str], lock: Mapping[str, Pin]) -> set[str]:
    """``roots`` and every locked distribution they require, directly or not, as the lock's ``# via``
    comments record it (B's "via A" means A requires B; pip-compile resolved for the images'
    platform, so these are the requirements that apply there)."""
    required_by: dict[str, set[str]] = {}
    for name, pin in lock.items():
        for dependent in pin.via:
            required_by.setdefault(dependent, set()).add(name)
    found: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += required_by.get(name, ())
    return found


@cache
def _installed_top_levels() -> Mapping[str, list[str]]:
    import importlib.metadata

    return importlib.metadata.packages_distributions()


@cache
def _installed_files(distribution: str) -> frozenset[str]:
    import importlib.metadata

    return frozenset(str(f) for f in importlib.metadata.distribution(distribution).files or ())


def distributions(module: str) -> set[str]:
    """The distributions that provide ``module`` (normalized): of those installed here sharing its
    top-level name, the ones shipping the module itself (``kfp/__init__.py``: kfp, not
    kfp-kubernetes, which ships only ``kfp/kubernetes/``), else -- a namespace package such as
    ``google.cloud`` -- the ones shipping files under it, trying ``a.b.c``, then ``a.b``, then ``a``
    (``from a.b import c``: c may be a name, not a module). A module not installed here (vLLM's
    wheel is CUDA-only) maps to the distribution of its name."""
    top = module.split(".")[0]
    candidates = set(_installed_top_levels().get(top, ()))
    if not candidates:
        return {normalize(top)}
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        path = "/".join(parts[:depth])
        own = {d for d in candidates if {f"{path}.py", f"{path}/__init__.py"} & _installed_files(d)}
        under = {d for d in candidates if any(f.startswith(path + "/") for f in _installed_files(d))}
        if own or under:
            return {normalize(d) for d in own or under}
    return {normalize(d) for d in candidates}


def stage_imports(stage: str, root: Path = ROOT) -> dict[str, frozenset[str]]:
    """Third-party modules the image of ``stage`` must import -> where: its code's imports and the
    kfp executor of the component command."""
    imports = dict(reach(stage, root).imports)
    imports[EXECUTOR_MODULE] = imports.get(EXECUTOR_MODULE, frozenset()) | {EXECUTOR_COMMAND}
    return imports


def stage_lock(stage: str, root: Path = ROOT) -> str:
    """The text of ``requirements/stages/<stage>.lock.txt``: from the full lock of the stage's
    flavour, the distributions its imports need and everything they require, hashes included."""
    flavour = image_flavour(stage, root)
    full_lock = FULL_LOCKS[flavour]
    lock = read_lock(root / full_lock)
    imported_by: dict[str, set[str]] = {}
    for module, where in sorted(stage_imports(stage, root).items()):
        found = distributions(module) & lock.keys()
        if not found:
            raise ImageError(f"{', '.join(sorted(where))} imports {module} (distribution "
                             f"{'/'.join(sorted(distributions(module)))}), which {full_lock} does not pin: add "
                             f"it to pyproject.toml and run `make lock-images`")
        for name in found:
            imported_by.setdefault(name, set()).update(where)
    names = requirement_closure(imported_by, lock)
    lines = [f"# The {stage} stage image ({flavour}): the distributions its code imports, the kfp executor's",
             f"# and everything they require, pinned and hashed as in {full_lock}.",
             "# Written by `make lock-images` (python -m pipeline.images locks): do not edit.", "#"]
    for name in sorted(names):
        pin = lock[name]
        lines.append(pin.requirement + " \\")
        lines += [f"    --hash=sha256:{h}" + (" \\" if i < len(pin.hashes) - 1 else "")
                  for i, h in enumerate(pin.hashes)]
        via = sorted(pin.via & names) + [f"{_module_name(root, root / w)} (import)" if w.endswith(".py") else w
                                         for w in sorted(imported_by.get(name, ()))]
        lines += ["    # via"] + [f"    #   {entry}" for entry in via]
    return "\n".join(lines) + "\n"


def write_locks(root: Path = ROOT, check: bool = False) -> list[str]:
    """Write every stage's lock (``check``: only compare); the stale ones' paths. A lock of a stage
    that no longer exists is removed."""
    folder = root / STAGE_LOCKS
    expected = {folder / f"{stage}.lock.txt": stage_lock(stage, root) for stage in stages(root)}
    stale = [p for p, text in expected.items() if not p.is_file() or p.read_text() != text]
    stale += [p for p in folder.glob("*.lock.txt") if p not in expected]
    if not check:
        folder.mkdir(parents=True, exist_ok=True)
        for path in stale:
            if path in expected:
                path.write_text(expected[path])
            else:
                path.unlink()
    return sorted(p.relative_to(root).as_posix() for p in stale)


# ----------------------------------------------------------------------------------------------
# Build contexts
# ----------------------------------------------------------------------------------------------


def dockerfile(stage: str, root: Path = ROOT) -> str:
    """The context's Dockerfile: its flavour's template, ``ARG STAGE`` given the stage's name."""
    template = TEMPLATES[image_flavour(stage, root)]
    lines = (root / template).read_text().splitlines(keepends=True)
    if sum(line.rstrip("\n") == STAGE_ARG for line in lines) != 1:
        raise ImageError(f"{template}: needs exactly one line {STAGE_ARG!r} (set to the stage by pipeline/images.py)")
    return "".join(f"{STAGE_ARG}={stage}\n" if line.rstrip("\n") == STAGE_ARG else line for line in lines)


def install_descriptor(stage: str, root: Path = ROOT) -> str:
    """The context's ``pyproject.toml``: the context's ``components`` packages with their data
    files, no dependencies (all in the stage lock, installed first); version, Python and build
    backend as in the repository's pyproject.toml."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    project = pyproject["project"]
    return "\n".join([
        f"# The code of the {stage} stage image (pipeline/images.py); its dependencies are",
        f"# {CONTEXT_STAGE_LOCK}, installed before it.",
        "[build-system]",
        f"requires = {json.dumps(pyproject['build-system']['requires'])}",
        f"build-backend = {json.dumps(pyproject['build-system']['build-backend'])}",
        "",
        "[project]",
        f"name = {json.dumps('sidreasoner-' + stage.replace('_', '-'))}",
        f"version = {json.dumps(project['version'])}",
        f"requires-python = {json.dumps(project['requires-python'])}",
        "dependencies = []",
        "",
        "[tool.setuptools.packages.find]",
        'include = ["components*"]',
        "",
        "[tool.setuptools.package-data]",
        *(f"{json.dumps(package)} = {json.dumps(patterns)}"
          for package, patterns in pyproject["tool"]["setuptools"]["package-data"].items()),
        "",
    ])


def context_files(stage: str, root: Path = ROOT) -> dict[str, bytes]:
    """Every file of the build context of ``stage``'s image: path in the context -> content."""
    lock = root / STAGE_LOCKS / f"{stage}.lock.txt"
    if not lock.is_file():
        raise ImageError(f"{lock.relative_to(root)} does not exist: run `make lock-stages`")
    files = {path: (root / path).read_bytes() for path in sorted(reach(stage, root).files)}
    files["Dockerfile"] = dockerfile(stage, root).encode()
    files["pyproject.toml"] = install_descriptor(stage, root).encode()
    files[CONTEXT_BUILD_LOCK] = (root / BUILD_LOCK).read_bytes()
    files[CONTEXT_STAGE_LOCK] = lock.read_bytes()
    return files


def context_digest(files: Mapping[str, bytes]) -> str:
    """sha256 over a context's paths and contents: equal digests, equal contexts."""
    digest = hashlib.sha256()
    for path in sorted(files):
        content = files[path]
        digest.update(f"{path}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def write_context(stage: str, out: Path, root: Path = ROOT) -> tuple[Path, str]:
    """Assemble ``out/<stage>/`` (replacing what was there) and return it with its digest."""
    files = context_files(stage, root)
    out.mkdir(parents=True, exist_ok=True)
    target = out / stage
    staging = Path(tempfile.mkdtemp(prefix=f".{stage}-", dir=out))
    try:
        staging.chmod(0o755)  # the modes the image's files get, whatever the umask
        for path, content in files.items():
            for folder in reversed((staging / path).relative_to(staging).parents[:-1]):
                (staging / folder).mkdir(exist_ok=True)
                (staging / folder).chmod(0o755)
            (staging / path).write_bytes(content)
            (staging / path).chmod(0o644)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, context_digest(files)


# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------


def stage_pins(stage: str, root: Path = ROOT) -> dict[str, Pin]:
    """What the image of ``stage`` installs from locks: the build backend and its stage lock."""
    return {**read_lock(root / BUILD_LOCK), **read_lock(root / STAGE_LOCKS / f"{stage}.lock.txt")}


def measure_files(find_links: str | None, root: Path = ROOT) -> dict[str, dict[str, object]]:
    """The compressed size of every file the stage images install -> ``{requirement: {file, sha256,
    size}}``. Files already in ``SIZES`` with a hash the locks still accept are kept; the others are
    fetched with ``pip download`` as pip picks them for this interpreter and platform (CPython 3.11
    on x86_64 glibc 2.36: the images' python:3.11.7-slim-bookworm) and checked against the locks'
    hashes. Network: the package index (PyPI), through pip, which shows its progress;
    ``find_links`` serves torch's CPU build."""
    known = json.loads((root / SIZES).read_text()) if (root / SIZES).is_file() else {}
    measured: dict[str, dict[str, object]] = {}
    for flavour in sorted({image_flavour(stage, root) for stage in stages(root)}):
        pins = {p.requirement: p for s in stages(root) if image_flavour(s, root) == flavour
                for p in stage_pins(s, root).values()}
        have = {**known, **measured}  # a requirement in both flavours' images is fetched once
        missing = {r: p for r, p in pins.items() if r not in have or have[r]["sha256"] not in p.hashes}
        measured.update({r: have[r] for r in pins.keys() - missing.keys()})
        if missing:
            measured.update(_download_and_measure(missing, find_links))
    return dict(sorted(measured.items()))


def _download_and_measure(pins: Mapping[str, Pin], find_links: str | None) -> dict[str, dict[str, object]]:
    if sys.version_info[:2] != (3, 11) or sys.platform != "linux" or os.uname().machine != "x86_64":
        raise ImageError("measure with CPython 3.11 on linux x86_64, the images' platform: pip picks the files for it")
    with tempfile.TemporaryDirectory(prefix="image-files-") as folder:
        requirements = Path(folder) / "requirements.txt"
        requirements.write_text("".join(f"{r} " + " ".join(f"--hash=sha256:{h}" for h in p.hashes) + "\n"
                                        for r, p in sorted(pins.items())))
        env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_CONSTRAINT")}
        env["PIP_CONFIG_FILE"] = os.devnull
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                        "--no-build-isolation", "--dest", str(Path(folder) / "files"),
                        *(["--find-links", find_links] if find_links else []), "-r", str(requirements)],
                       check=True, env=env)
        by_hash = {}
        for file in (Path(folder) / "files").iterdir():
            with file.open("rb") as f:
                by_hash[hashlib.file_digest(f, "sha256").hexdigest()] = file
        measured = {}
        for requirement, pin in pins.items():
            sha256 = next(h for h in pin.hashes if h in by_hash)
            measured[requirement] = {"file": by_hash[sha256].name, "sha256": sha256,
                                     "size": by_hash[sha256].stat().st_size}
        return measured


@dataclass(frozen=True)
class ImageSize:
    stage: str
    flavour: str
    distributions: int
    bytes: int


def image_sizes(root: Path = ROOT) -> list[ImageSize]:
    """Per stage, the sum of the compressed files (wheels, deepspeed's sdist) its image installs,
    from the measured sizes: a lower bound of the image (installed size is larger)."""
    measured = json.loads((root / SIZES).read_text())
    sizes = []
    for stage in stages(root):
        pins = stage_pins(stage, root)
        unmeasured = [p.requirement for p in pins.values()
                      if p.requirement not in measured or measured[p.requirement]["sha256"] not in p.hashes]
        if unmeasured:
            raise ImageError(f"{SIZES} lacks {', '.join(unmeasured)} (of {stage}): run `make image-sizes`")
        sizes.append(ImageSize(stage, image_flavour(stage, root), len(pins),
                               sum(measured[p.requirement]["size"] for p in pins.values())))
    return sizes


def size_table(root: Path = ROOT) -> str:
    """The README's table of image sizes."""
    rows = ["| stage | flavour | locked distributions | compressed files (MB) |", "| --- | --- | ---: | ---: |"]
    rows += [f"| `{s.stage}` | {s.flavour} | {s.distributions} | {s.bytes / 1e6:,.0f} |" for s in image_sizes(root)]
    return "\n".join(rows)


def write_size_table(root: Path = ROOT) -> None:
    """Replace the table between the README's size markers."""
    readme = root / README
    text = readme.read_text()
    start, end = text.find(SIZE_TABLE_START), text.find(SIZE_TABLE_END)
    if start < 0 or end < start:
        raise ImageError(f"{README}: no '{SIZE_TABLE_START}' ... '{SIZE_TABLE_END}' markers for the size table")
    readme.write_text(text[: start + len(SIZE_TABLE_START)] + "\n" + size_table(root) + "\n" + text[end:])


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.images", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("stages", help="the stages, one a line")
    locks = commands.add_parser("locks", help=f"write {STAGE_LOCKS}/<stage>.lock.txt from the full locks")
    locks.add_argument("--check", action="store_true", help="only say which are stale (exit 1 if any)")
    context = commands.add_parser("context", help="assemble the build contexts of stages")
    context.add_argument("stages", nargs="+", metavar="STAGE")
    context.add_argument("--out", type=Path, default=ROOT / "build" / "images")
    sizes = commands.add_parser("sizes", help=f"measure the locked files (pip download) into {SIZES} and the README")
    sizes.add_argument("--find-links", help="where pip finds torch's CPU build")
    args = parser.parse_args(argv)
    try:
        if args.command == "stages":
            print("\n".join(stages()))
        elif args.command == "locks":
            stale = write_locks(check=args.check)
            print("\n".join(f"{'stale' if args.check else 'wrote'} {p}" for p in stale) or "stage locks are current")
            return 1 if args.check and stale else 0
        elif args.command == "context":
            unknown = sorted(set(args.stages) - set(stages()))
            if unknown:
                raise ImageError(f"not a stage: {', '.join(unknown)} (stages: {', '.join(stages())})")
            for stage in args.stages:
                target, digest = write_context(stage, args.out)
                print(f"{stage}: {target} sha256:{digest}")
        elif args.command == "sizes":
            (ROOT / SIZES).write_text(json.dumps(measure_files(args.find_links), indent=1) + "\n")
            write_size_table()
            print(size_table())
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
