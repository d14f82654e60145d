"""The layering rules of DESIGN.md, checked on the source and on the live import graph.

- The product (`sam3lite_core`, `sam3lite_pipeline`, `bpe`) never imports the upstream `sam3`.
- `sam3lite_core` imports neither `dagster` nor `dagster_pipes`.
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
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=True,
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
