"""The architecture as tests: one ``scanlens`` namespace, the layer contracts, no import cycles.

The contracts are import-linter's, in ``pyproject.toml`` (``[tool.importlinter]``), explained in
``docs/architecture.md``. import-linter's graph builder (grimp) walks one folder per top-level
package, and ``scanlens`` spans three folders of the repository (``service/``, ``instrument_sim/`` and
``models/``, joined by setuptools' ``package-dir``). So the tests first lay the package out as a wheel
installs it — the same mapping and package list, read from ``pyproject.toml`` — and check that copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _folder(package: str) -> Path:
    """The repository folder of a package under the package-dir mapping (the longest mapped prefix wins)."""
    mapping = SETUPTOOLS["package-dir"]
    prefix = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
    return ROOT / mapping[prefix] / Path(*package[len(prefix):].split(".")[1:])


def _install_copy(target: Path) -> Path:
    """The ``.py`` files of every listed package, where a wheel would put them; returns ``target``."""
    for package in SETUPTOOLS["packages"]:
        dest = target / Path(*package.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for src in _folder(package).glob("*.py"):
            shutil.copy2(src, dest / src.name)
    return target


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    return _install_copy(tmp_path_factory.mktemp("site"))


def _run(args: list[str], layout: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(layout)}
    return subprocess.run(args, cwd=layout, env=env, capture_output=True, text=True, timeout=300)


def _lint(layout: Path) -> subprocess.CompletedProcess[str]:
    return _run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], layout)


def _imports(layout: Path) -> dict[str, list[str]]:
    """Every module of ``scanlens`` -> the ``scanlens`` modules it imports (TYPE_CHECKING imports included)."""
    script = ("import grimp, json, sys; g = grimp.build_graph('scanlens', cache_dir=None); "
              "json.dump({m: sorted(g.find_modules_directly_imported_by(m)) for m in g.modules}, sys.stdout)")
    out = _run([sys.executable, "-c", script], layout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def find_cycles(imports: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(root: str) -> None:  # iterative Tarjan: deep import chains must not hit the recursion limit
        nonlocal counter
        work = [(root, iter(imports.get(root, [])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(imports.get(child, []))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1 or node in imports.get(node, []):
                    cycles.append(sorted(component))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return cycles


def test_generic_names_are_not_installed(tmp_path) -> None:
    """Outside the repository ``import scanlens`` works and ``import service`` (or models, instrument_sim) fails."""
    code = ("import importlib.util as u, scanlens, scanlens.sim, scanlens.models, scanlens.model_files;"
            "print([n for n in ('service', 'models', 'instrument_sim') if u.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    fails = subprocess.run([sys.executable, "-c", "import service"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert fails.returncode != 0 and "No module named 'service'" in fails.stderr


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    """A folder with an ``__init__.py`` that ``packages`` does not list would be missing from a wheel."""
    listed = {_folder(p).resolve() for p in SETUPTOOLS["packages"]}
    roots = [ROOT / d for d in SETUPTOOLS["package-dir"].values()]
    present = {init.parent.resolve() for root in roots for init in root.rglob("__init__.py")
               if "__pycache__" not in init.parts}
    assert present - listed == set(), "add these packages to [tool.setuptools] packages"
    assert listed - present == set()


def test_the_checked_copy_is_the_imported_package(layout: Path) -> None:
    import scanlens.models.demo.cli as demo
    import scanlens.pipeline.scans as scans

    assert (layout / "scanlens/models/demo/cli.py").read_bytes() == Path(demo.__file__).read_bytes()
    assert (layout / "scanlens/pipeline/scans.py").read_bytes() == Path(scans.__file__).read_bytes()


def test_import_contracts_hold(layout: Path) -> None:
    result = _lint(layout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


def test_a_wrong_import_breaks_a_contract(layout: Path, tmp_path) -> None:
    """The contracts can fail: the pipeline importing a simulator is caught, with the import named."""
    broken = shutil.copytree(layout, tmp_path / "site")
    victim = broken / "scanlens" / "pipeline" / "stats.py"
    victim.write_text(victim.read_text(encoding="utf-8") + "\nfrom scanlens.sim import stream  # noqa\n",
                      encoding="utf-8")
    result = _lint(broken)
    assert result.returncode != 0
    assert "scanlens.pipeline.stats -> scanlens.sim.stream" in result.stdout


def test_no_import_cycles(layout: Path) -> None:
    """No modules import each other, directly or through others (TYPE_CHECKING imports count)."""
    cycles = find_cycles(_imports(layout))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_type_checking_cycle(layout: Path, tmp_path) -> None:
    broken = shutil.copytree(layout, tmp_path / "site")
    topics = broken / "scanlens" / "protocol" / "topics.py"
    topics.write_text(topics.read_text(encoding="utf-8") +
                      "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import codec  # noqa\n",
                      encoding="utf-8")
    codec = broken / "scanlens" / "protocol" / "codec.py"
    codec.write_text(codec.read_text(encoding="utf-8") + "\nfrom . import topics  # noqa\n", encoding="utf-8")
    cycles = find_cycles(_imports(broken))
    assert any({"scanlens.protocol.topics", "scanlens.protocol.codec"} <= set(c) for c in cycles)


def test_find_cycles_on_hand_made_graphs() -> None:
    assert find_cycles({"a": ["b"], "b": ["c"], "c": []}) == []
    assert find_cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert find_cycles({"a": ["a"]}) == [["a"]]
