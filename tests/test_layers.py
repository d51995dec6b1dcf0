"""Layer rules (docs/architecture.md): imports only point down.

data/ and models/ are siblings below the run readers (runs/trained.py, runs/inference.py) and
the jobs. data/ imports neither models/ nor anything above;
models/ imports nothing above it, and from data/ only what sits below both (chat rendering).
Every import is read from the source with ast, module-level and inside functions alike, so a
lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

# The jobs and the entry points (vision/ and ui/ as well, once they exist).
ABOVE_MODELS = (
    "train",
    "serve",
    "evaluation",
    "export",
    "plan",
    "vision",
    "workflows",
    "workshop",
    "cli",
    "ui",
)
# runs/trained.py and runs/inference.py open run folders and load models: above models/
# (runs/folder.py, the writer, stays below everything)
RUN_READERS = ("runs.trained", "runs.inference")
FORBIDDEN_IN_DATA = tuple(f"tunesmith.{p}" for p in ("models", *RUN_READERS, *ABOVE_MODELS))
FORBIDDEN_IN_MODELS = tuple(f"tunesmith.{p}" for p in (*RUN_READERS, *ABOVE_MODELS))
# The only data/ modules models/ may use: they sit below both (prompt_ids, IGNORE_INDEX).
MODELS_MAY_IMPORT_FROM_DATA = frozenset({"tunesmith.data.render"})


def _modules(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    names = [package]
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}.")]
    return sorted(names)


def _imports(module_name: str) -> set[str]:
    """Every module the source names in an import, anywhere in the file; for `from X import y`
    both X and X.y (y may be a submodule). Relative imports are resolved."""
    module = importlib.import_module(module_name)
    source = Path(module.__file__).read_text(encoding="utf-8")
    is_package = Path(module.__file__).name == "__init__.py"
    package_parts = module_name.split(".") if is_package else module_name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _hits(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("module_name", _modules("tunesmith.data"))
def test_data_imports_neither_models_nor_anything_above(module_name):
    assert _hits(_imports(module_name), FORBIDDEN_IN_DATA) == [], module_name


@pytest.mark.parametrize("module_name", _modules("tunesmith.models"))
def test_models_import_nothing_above_and_only_render_from_data(module_name):
    names = _imports(module_name)
    assert _hits(names, FORBIDDEN_IN_MODELS) == [], module_name
    # `from tunesmith.data.render import prompt_ids` also names tunesmith.data.render.prompt_ids
    allowed = tuple(MODELS_MAY_IMPORT_FROM_DATA)
    from_data = [n for n in _hits(names, ("tunesmith.data",)) if not _hits({n}, allowed)]
    assert from_data == [], module_name


def test_the_reader_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "layerprobe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(
        "from . import sibling\n"
        "def f():\n"
        "    from tunesmith.models.client import make_client\n"
        "    import tunesmith.train.sft\n"
    )
    (pkg / "sibling.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = _imports("layerprobe.mod")
    assert {"layerprobe.sibling", "tunesmith.models.client", "tunesmith.train.sft"} <= names
    assert _hits(names, FORBIDDEN_IN_DATA) == [
        "tunesmith.models.client",
        "tunesmith.models.client.make_client",
        "tunesmith.train.sft",
    ]


# The workshop's action layer sits beside workflows/: above the jobs, below the doors (cli/,
# and the UI later), which all call it; nothing below it may call it back.
BELOW_WORKSHOP = ("train", "evaluation", "plan", "export", "runs", "data", "models", "config")


@pytest.mark.parametrize("module_name", _modules("tunesmith.workshop"))
def test_the_workshop_imports_no_door(module_name):
    doors = tuple(f"tunesmith.{p}" for p in ("cli", "serve", "ui"))
    assert _hits(_imports(module_name), doors) == [], module_name


@pytest.mark.parametrize(
    "module_name", [m for p in BELOW_WORKSHOP for m in _modules(f"tunesmith.{p}")]
)
def test_nothing_below_the_workshop_imports_it(module_name):
    assert _hits(_imports(module_name), ("tunesmith.workshop",)) == [], module_name
