"""The layering rules of DESIGN.md and docs/architecture.md, checked on the source and on the live import graph.

- The product (`sam3lite_core`, `sam3lite_pipeline`, `bpe`) never imports the upstream `sam3`.
- `sam3lite_core` imports neither `dagster` nor `dagster_pipes`.
- Inside the core every import points left in `CORE_LAYERS` (same layer allowed), and the core never names a
  `sam3lite_pipeline` module, not even as a string to load by name.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("sam3lite_core", "sam3lite_pipeline", "bpe")


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            # importlib.import_module("sam3...") would dodge the static check; catch literal names too.
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                roots.add(node.args[0].value.split(".")[0])
    return roots


# The core's layers, lowest first: a module may import its own layer and those left of it, never one to its right.
CORE_LAYERS: tuple[tuple[str, ...], ...] = (
    ("box_ops", "batch", "tokenizer", "model", "precision", "distributed"),
    ("data",),
    ("weights",),
    ("eval", "inference", "predictor", "tiling", "feature_cache", "cache_budget"),
    ("train",),
    ("serve",),
    ("commands", "cli"),
)
# Entry scripts sit at the top whatever package holds them (`python -m sam3lite_core.train` runs the command).
ENTRY_MODULES = {"sam3lite_core.train.__main__": "commands"}


def _layer(module: str) -> int | None:
    """The layer index of a core module; None for `sam3lite_core` itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    part = ENTRY_MODULES.get(module, parts[1])
    for index, names in enumerate(CORE_LAYERS):
        if part in names:
            return index
    raise AssertionError(f"{module} is in no layer of CORE_LAYERS: add its part there and to docs/architecture.md")


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _named_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every project module `path` imports, statically (also inside functions, relative or not) or by a name in
    a string of its own (importlib.import_module, entry-point values, subprocess `-m` arguments)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and " " not in node.value.strip():
            found.add(node.value.strip().split(":")[0])  # a whole string that is a module name (prose is not)
    return {name for name in found if name.split(".")[0] in ("sam3lite_core", "sam3lite_pipeline") and "." in name}


def _core_part_exists(module: str) -> bool:
    part = module.split(".")[1]
    return (ROOT / "sam3lite_core" / part).is_dir() or (ROOT / "sam3lite_core" / f"{part}.py").is_file()


def test_core_imports_point_left():
    offenders = []
    for path in _sources("sam3lite_core"):
        module = _module_name(path)
        for target in sorted(_named_modules(path)):
            if target.startswith("sam3lite_pipeline"):
                offenders.append(f"{module} names {target}: the core never reaches the pipeline")
            elif _core_part_exists(target) and _layer(module) is not None and _layer(target) > _layer(module):
                offenders.append(f"{module} -> {target}")
    assert not offenders, "imports that point right in CORE_LAYERS:\n" + "\n".join(offenders)


def test_layer_scan_sees_lazy_and_named_imports(tmp_path):
    """The scanner itself: an import inside a function, a relative import and a module named in a string count."""
    source = tmp_path / "sam3lite_core" / "model" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "from .config import ModelConfig\n"
        "def f():\n    from sam3lite_core.train.loop import train\n"
        "    import importlib\n    return importlib.import_module('sam3lite_pipeline.definitions')\n"
    )
    names = _named_modules(source, tmp_path)
    assert {
        "sam3lite_core.model.config.ModelConfig",
        "sam3lite_core.train.loop.train",
        "sam3lite_pipeline.definitions",
    } <= names
    assert _layer("sam3lite_core.train.loop") > _layer("sam3lite_core.model.probe")
    assert _layer("sam3lite_core.train.__main__") == _layer("sam3lite_core.cli")


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PRODUCT)
def test_product_source_never_imports_vendor(package):
    offenders = [str(p.relative_to(ROOT)) for p in _sources(package) if "sam3" in _imported_roots(p)]
    assert not offenders, f"the product must not import the upstream sam3 package: {offenders}"


def test_core_source_never_imports_dagster():
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources("sam3lite_core")
        if _imported_roots(p) & {"dagster", "dagster_pipes", "dagster_graphql", "dagster_webserver"}
    ]
    assert not offenders, f"sam3lite_core must stay free of Dagster: {offenders}"


_IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
blocked = sys.argv[1].split(",")
for name in blocked:
    sys.modules[name] = None  # makes `import name` raise ImportError
imported, failed = [], {}
for package in sys.argv[2].split(","):
    pkg = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(getattr(pkg, "__path__", []), package + ".")]
    for name in names:
        try:
            importlib.import_module(name)
            imported.append(name)
        except Exception as exc:
            failed[name] = repr(exc)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked and sys.modules[m] is not None)
print(json.dumps({"imported": imported, "failed": failed, "leaked": leaked}))
"""


def _import_everything(blocked: list[str], packages: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, ",".join(blocked), ",".join(packages)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_product_module_imports_with_sam3_unimportable():
    result = _import_everything(["sam3"], list(PRODUCT))
    assert not result["failed"], result["failed"]
    assert "sam3lite_core.tokenizer" in result["imported"]


def test_every_core_module_imports_with_dagster_unimportable():
    result = _import_everything(["dagster", "dagster_pipes"], ["sam3lite_core"])
    assert not result["failed"], result["failed"]
    assert not result["leaked"]
