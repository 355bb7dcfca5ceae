"""Static views of the stage images for the platform tests: what `make images` would build, what
each Dockerfile installs, and what each stage's code imports. Nothing here needs Docker or the
network: the build plan comes from `make -n`, the rest from reading files."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
REQUIREMENTS = ROOT / "requirements"
COMPONENTS = ROOT / "components"

#: Our own top-level packages (imports of them are followed, not looked up in a lock).
LOCAL_PACKAGES = ("components", "pipeline")

#: Distributions of imports that the dev venv cannot have (the PyPI vLLM wheel is CUDA-only).
NOT_INSTALLED_HERE = {"vllm": ("vllm",)}


@dataclass(frozen=True)
class Build:
    """One `docker build` of the `make images` plan."""

    dockerfile: Path
    tag: str
    base: str | None  # the --build-arg BASE image, for the stage images


def make_images_plan(registry: str, tag: str) -> list[Build]:
    """The builds `make images REGISTRY=registry TAG=tag` runs, read from `make -n` (no engine needed)."""
    out = subprocess.run(["make", "-n", "--no-print-directory", "images", f"REGISTRY={registry}", f"TAG={tag}",
                          "GIT_COMMIT=0123456789abcdef"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    builds = []
    for command in re.findall(r"docker build .*?(?<!\\)\n", out.replace("\\\n", " "), flags=re.S):
        dockerfile = re.search(r"--file (\S+)", command).group(1)
        base = re.search(r"--build-arg BASE=(\S+)", command)
        builds.append(Build(ROOT / dockerfile, re.search(r"--tag (\S+)", command).group(1),
                            base.group(1) if base else None))
    return builds


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Pin]:
    """A pip-compile lock: normalized name -> pinned version and its sha256 hashes."""
    pins: dict[str, Pin] = {}
    name = None
    for line in path.read_text().splitlines():
        requirement = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if requirement:
            name = normalize(requirement.group(1))
            pins[name] = Pin(requirement.group(2), ())
        elif name and (digest := re.match(r"\s+--hash=sha256:([0-9a-f]{64})", line)):
            pins[name] = Pin(pins[name].version, pins[name].hashes + (digest.group(1),))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"{path.name}: unexpected line {line!r}")
    return pins


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def copied_locks(dockerfile: Path) -> list[Path]:
    """The lock files a Dockerfile copies in (what its pip installs read)."""
    locks = []
    for instruction, args in instructions(dockerfile):
        if instruction == "COPY":
            locks += [ROOT / src for src in args.split()[:-1] if src.endswith(".lock.txt")]
    return locks


def base_dockerfile(build: Build) -> Path:
    """The Dockerfile of the base a stage image is built on (its BASE is `REGISTRY/<base>:TAG`)."""
    assert build.base, f"{build.dockerfile.name} is built without a BASE"
    return DOCKER / f"{build.base.rsplit('/', 1)[1].split(':')[0]}.Dockerfile"


def image_lock(build: Build) -> dict[str, Pin]:
    """Everything the image of a stage build installs: the locks its base copies in."""
    pins: dict[str, Pin] = {}
    for lock in copied_locks(base_dockerfile(build)) + copied_locks(build.dockerfile):
        pins.update(read_lock(lock))
    return pins


def stage_packages() -> list[str]:
    """Every stage in components/: a package whose ``__init__.py`` declares ``STAGE``."""
    def declares_stage(path: Path) -> bool:
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(getattr(target, "id", None) == "STAGE" for target in targets):
                return True
        return False

    return sorted(p.parent.name for p in COMPONENTS.glob("*/__init__.py") if declares_stage(p))


def _module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imported_modules(path: Path) -> set[str]:
    """Dotted names a file imports anywhere (top level, in functions, under try/except), relative
    imports resolved; ``from a import b`` yields ``a.b`` too, since b may be a module."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(parent + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def third_party_imports(stage: str) -> dict[str, set[Path]]:
    """Third-party modules imported by ``components/<stage>`` and, transitively, by every module of
    ours it imports (``components.common`` ...) -> the files importing them."""
    todo = sorted((COMPONENTS / stage).rglob("*.py"))
    seen: set[Path] = set()
    imports: dict[str, set[Path]] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            top = module.split(".")[0]
            if top in LOCAL_PACKAGES:
                parts = module.split(".")
                for depth in range(1, len(parts) + 1):  # the packages' __init__ run too
                    file = _module_file(".".join(parts[:depth]))
                    if file and file not in seen:
                        todo.append(file)
            elif top not in sys.stdlib_module_names:
                imports.setdefault(module, set()).add(path)
    return imports


@cache
def _packages_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@cache
def _dist_paths(dist: str) -> tuple[str, ...]:
    return tuple(str(f) for f in importlib.metadata.distribution(dist).files or ())


def distributions(module: str) -> set[str]:
    """The distributions that may provide ``module`` (normalized names; empty if unknown). For a
    namespace package (``google.cloud.storage``) only those shipping the module's own files."""
    top = module.split(".")[0]
    if top in NOT_INSTALLED_HERE:
        return set(NOT_INSTALLED_HERE[top])
    candidates = set(_packages_distributions().get(top, ()))
    if len(candidates) > 1:
        parts = module.split(".")
        for depth in range(len(parts), 1, -1):
            prefix = "/".join(parts[:depth])
            narrowed = {d for d in candidates
                        if any(p.startswith(prefix + "/") or p == prefix + ".py" for p in _dist_paths(d))}
            if narrowed:
                candidates = narrowed
                break
    return {normalize(d) for d in candidates}
