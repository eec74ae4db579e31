"""Packages layer one way: core `rlzoo/` <- `envs/` <- `algorithms/` <- `experiments/` <- `benchmarks/`.

Checked two ways: statically (no module imports a package above its own layer,
at top level or inside a function) and at run time (importing `rlzoo.envs` in a
fresh interpreter loads no algorithm).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"rlzoo": 0, "rlzoo.envs": 1, "rlzoo.algorithms": 2, "rlzoo.experiments": 3, "rlzoo.benchmarks": 4}
FOLDERS = {"rlzoo": "rlzoo", "envs": "rlzoo.envs", "algorithms": "rlzoo.algorithms",
           "experiments": "rlzoo.experiments", "benchmarks": "rlzoo.benchmarks"}


def layer_of(module: str) -> str | None:
    """The package layer an imported module belongs to (the longest matching prefix)."""
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in a file, including imports inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def upward_imports(folder: str) -> list[str]:
    own = FOLDERS[folder]
    bad = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for line, module in imported_modules(path):
            layer = layer_of(module)
            if layer is not None and LAYERS[layer] > LAYERS[own]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} (layer {layer} is above {own})")
    return bad


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_no_module_imports_a_layer_above_its_own(folder):
    assert upward_imports(folder) == []


def test_the_check_finds_an_upward_import(tmp_path, monkeypatch):
    (tmp_path / "rlzoo").mkdir()
    (tmp_path / "rlzoo" / "bad.py").write_text("def f():\n    from rlzoo.algorithms import sac\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert upward_imports("rlzoo") == ["rlzoo/bad.py:2 imports rlzoo.algorithms (layer rlzoo.algorithms is above "
                                       "rlzoo)", "rlzoo/bad.py:2 imports rlzoo.algorithms.sac (layer "
                                       "rlzoo.algorithms is above rlzoo)"]


def test_importing_envs_loads_no_algorithm():
    code = ("import sys, rlzoo.envs, rlzoo.envs.meta, rlzoo.envs.memory, rlzoo.envs.distractor; "
            "print(sorted(m for m in sys.modules if m.startswith(('rlzoo.algorithms', 'rlzoo.experiments', "
            "'rlzoo.benchmarks'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
