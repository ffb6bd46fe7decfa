"""The package's layering: a module imports only from its own floor or the floors below it, at the top of
the file or inside a function; training recipes are reached only through `repro.recipes`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "repro"

# From the ground up (docs/architecture.md). A module may import its own floor and the floors below.
FLOORS: list[tuple[str, ...]] = [
    ("repro", "repro.errors", "repro.util", "repro.config", "repro.tasks", "repro.workspace"),
    ("repro.runtime", "repro.micro_batches", "repro.audio", "repro.metrics", "repro.recipes", "repro.trainlog"),
    ("repro.models",),
    ("repro.provenance",),
    ("repro.data",),
    ("repro.features",),
    ("repro.probing", "repro.similarity"),
    ("repro.paper",),
    ("repro.pipeline", "repro.console", "repro.ownership"),
    ("repro.recipes.lifecycle", "repro.recipes.speaker", "repro.recipes.speech_ssl"),
    ("repro.bench",),
    ("repro.plan", "repro.rehearse"),
    ("repro.cli", "repro.__main__"),
]
RECIPE_PACKAGES = ("repro.recipes.speaker", "repro.recipes.speech_ssl")


def floor(module: str) -> int:
    best = None
    for level, names in enumerate(FLOORS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > best[1]:
                    best = (level, len(name))
    if best is None:
        raise AssertionError(f"{module}: not on any floor of the layering; add it to FLOORS")
    return best[0]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, package: str) -> list[tuple[str, int]]:
    """(imported repro module, line) for every import statement of a file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("repro"):
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules()]
                found += [(m, node.lineno) for m in subs or [base]]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("repro")]
    return found


def test_every_module_is_on_a_floor():
    for name in modules():
        floor(name)


@pytest.mark.slow
def test_no_import_runs_upward():
    upward = []
    for name, path in modules().items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for target, line in imports(path, package):
            if floor(target) > floor(name):
                upward.append(f"{path.relative_to(ROOT.parent)}:{line}: {name} (floor {floor(name)}) imports "
                              f"{target} (floor {floor(target)})")
    assert not upward, "\n".join(upward)


def _in_recipes(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in RECIPE_PACKAGES)


@pytest.mark.slow
def test_recipes_are_reached_through_the_recipe_interface_only():
    from repro.recipes import RECIPES

    for r in RECIPES.values():
        assert _in_recipes(r.module), r
    for name, path in modules().items():
        if not _in_recipes(name):
            assert not [t for t, _ in imports(path, name) if _in_recipes(t)], name



def test_recipe_packages_do_not_import_each_other():
    """What two recipe packages share lives below them (`repro.trainlog`, `repro.recipes`)."""
    def package(module: str) -> str:
        return next(p for p in RECIPE_PACKAGES if module == p or module.startswith(p + "."))

    crossing = [f"{name} imports {t}" for name, path in modules().items() if _in_recipes(name)
                for t, _ in imports(path, name) if _in_recipes(t) and package(t) != package(name)]
    assert not crossing, "\n".join(crossing)
