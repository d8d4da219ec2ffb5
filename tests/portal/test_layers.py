"""The floors of docs/architecture.md hold: import-linter's contracts, and no cycle across apps.

``./scripts/test`` runs ``lint-imports`` as a step of its own; these tests show that the contracts
can fail (an upward import added on purpose breaks them), that every module sits on a floor, and
that the module graph has no cycle that spans two apps (grimp, counting imports inside functions).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = ("core", "security", "tenants", "compute", "scheduler", "portal")
LINT = Path(sys.executable).with_name("lint-imports")


def contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["importlinter"]["contracts"]


def floors() -> list[list[str]]:
    """The layers of the floors contract, top first, each a list of module names."""
    (layers,) = [c["layers"] for c in contracts() if c["id"] == "floors"]
    assert isinstance(layers, list)
    return [[m.strip().strip("()") for m in layer.split(":")] for layer in layers]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*APPS)


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=tree,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the first-party packages and the contract, to break on purpose."""
    for app in APPS:
        shutil.copytree(ROOT / app, tmp_path / app, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold_on_this_tree(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_inside_a_function_breaks_the_floors(tree: Path) -> None:
    errors = tree / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _upward() -> None:\n    from compute import models\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "Floors: an import only points down BROKEN" in result.stdout
    assert "core.errors -> compute.models" in result.stdout


def test_the_scheduler_importing_a_compute_service_breaks_the_floors(tree: Path) -> None:
    engine = tree / "scheduler" / "engine.py"
    engine.write_text(engine.read_text() + "\nfrom compute.services import instances  # noqa\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "scheduler.engine -> compute.services.instances" in result.stdout


def test_a_view_that_loads_libvirt_breaks_the_web_contract(tree: Path) -> None:
    catalog = tree / "compute" / "api" / "views" / "catalog.py"
    catalog.write_text(catalog.read_text() + "\nimport libvirt  # noqa\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "The web process never loads a driver, libvirt or the agent's tasks BROKEN" in result.stdout


def test_every_first_party_module_sits_on_a_floor(graph: grimp.ImportGraph) -> None:
    placed = [m for layer in floors() for m in layer]
    homeless = sorted(
        module
        for module in graph.modules
        if module not in APPS  # the packages themselves hold no code but their docstrings
        and module != "portal"
        and not any(module == p or module.startswith(p + ".") for p in placed)
    )
    assert homeless == []


def _components(graph: grimp.ImportGraph) -> list[set[str]]:
    """Strongly connected components of the first-party module graph (Tarjan, iterative)."""
    modules = sorted(m for m in graph.modules if m.split(".")[0] in APPS)
    edges = {
        m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i in graph.modules)
        for m in modules
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = edges.get(node, [])
            if i < len(targets):
                work.append((node, i + 1))
                child = targets[i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_no_import_cycle_spans_two_apps(graph: grimp.ImportGraph) -> None:
    assert spanning_cycles(graph) == []


def spanning_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The import cycles (strongly connected components) whose modules belong to two apps or more."""
    return [sorted(c) for c in _components(graph) if len({m.split(".")[0] for m in c}) > 1]


def test_the_cycle_check_finds_a_cycle_across_apps(tree: Path) -> None:
    """The check above can fail: a scheduler module importing a compute service closes a cycle."""
    engine = tree / "scheduler" / "engine.py"
    engine.write_text(engine.read_text() + "\nfrom compute.services import instances  # noqa\n")
    script = (
        "import json, sys, grimp\n"
        f"sys.path[:0] = [{str(tree)!r}]\n"
        f"sys.path.append({str(ROOT)!r})\n"
        "from tests.portal.test_layers import APPS, spanning_cycles\n"
        "print(json.dumps(spanning_cycles(grimp.build_graph(*APPS, cache_dir=None))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tree, capture_output=True, text=True, timeout=120, check=True
    )
    cycles = json.loads(result.stdout)
    assert any("scheduler.engine" in c and "compute.services.instances" in c for c in cycles), cycles
